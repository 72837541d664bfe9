"""`python -m capkit` runs the CLI (torchrun uses it: `torchrun --nproc_per_node=2 -m capkit train`)."""

from capkit.cli import main

if __name__ == "__main__":
    main()
