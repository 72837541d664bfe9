"""The base of every error that means "bad input" (a file, a bundle, a checkpoint, an option).

Its message is one line naming the problem; the CLI prints it and exits non-zero, no traceback.
"""


class CapkitError(ValueError):
    pass
