"""Resource limits: what one caption may cost, as part of the API.

A bundle, an image or an option from a stranger must not make one caption take gigabytes or
minutes. Each limit here bounds one input that decides how much memory or time a caption takes;
the defaults keep one caption of one image (any file up to 10 MB, any option or manifest value)
well under 1 GB of memory. A user who needs more raises a limit on purpose:

    from capkit.runtime import Captioner, Limits
    captioner = Captioner("bundle", limits=Limits(max_image_pixels=120_000_000))

Every check names the limit it hit, so the message says what to raise.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from capkit.runtime.errors import CapkitError


class LimitError(CapkitError):
    """An input over one of the :class:`Limits`; the message names the limit and the value."""


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = 50_000_000  # width x height of a decoded image, read from the header before
    # decoding; a 48-megapixel phone photo passes, and decoding one (RGBA at worst) costs about 200 MB
    max_aspect_ratio: float = 50.0  # long side / short side: resizing the short side to `resize` makes the
    # long one `resize x ratio`, so a 1 x 1,000,000 strip would become gigabytes; 50:1 covers panoramas
    max_resize: int = 2048  # the manifest's `resize` (short side after resizing), pixels
    max_crop: int = 1024  # the manifest's `crop` (encoder input side): 12 MB of float32 per image
    max_length: int = 512  # tokens per caption (option or manifest); captions are tens of tokens
    max_beam: int = 64  # beam width: beams are rows of the step graph's batch
    max_threads: int = 256  # ONNX Runtime intra-op threads; more only queue on the same cores
    max_batch_size: int = 1024  # images decoded together
    max_manifest_bytes: int = 64 * 1024 * 1024  # capkit.json; a 10,000-word vocabulary takes about 150 KB
    max_vocab_size: int = 1_000_000  # words in the manifest's vocabulary

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
                raise LimitError(f"limit {f.name} must be a number >= 1, got {value!r}")

    def check(self, name: str, value: float, what: str) -> None:
        """Raises LimitError when ``value`` is over the limit ``name``; ``what`` names the value for the message."""
        limit = getattr(self, name)
        if value > limit:
            raise LimitError(f"{what} {_shown(value)} is over the limit of {_shown(limit)} (Limits.{name}; raise it to "
                             "allow more)")


def _shown(value: float) -> str:
    """A number for a message: ``%g``, or its size where it is too large for a float (a 330-digit --beam)."""
    try:
        return f"{value:g}"
    except OverflowError:
        try:
            digits = str(value)
        except ValueError:  # over Python's 4,300 digits for str(int)
            return f"a {int(value).bit_length()}-bit number"
        return f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1}"


DEFAULT_LIMITS = Limits()

__all__ = ["DEFAULT_LIMITS", "LimitError", "Limits"]
