"""The built-in synthetic captioning datasets, and the registry of their families.

- :mod:`.family`: what every family shares: the folder writer (:class:`Family`), the splits, the
  completion marker, the colour table; it imports no family.
- :mod:`.shapes`: the demo family ("shapes", PNG), the set ``capkit train`` uses without ``--data``;
  :func:`generate_synthetic`, :func:`is_complete`, ``DEFAULT_COUNT`` and ``DEFAULT_IMAGE_SIZE`` here
  are its own.
- :mod:`.objects`: the second family ("objects", JPEG), for checking that a recipe tuned on the demo
  lands on data it was not tuned on.

Each family module imports :mod:`.family` only; this package imports all three and names the families.
"""

from __future__ import annotations

from capkit.training.synthetic.family import (CAPTIONS_PER_IMAGE, DEFAULT_SPLITS, META_FILE, SPLITS, Family,
                                              SyntheticError, annotations_file, split_sizes)
from capkit.training.synthetic.objects import OBJECTS_FAMILY
from capkit.training.synthetic.shapes import (DEFAULT_COUNT, DEFAULT_IMAGE_SIZE, SHAPES_FAMILY, generate_synthetic,
                                              is_complete)

_FAMILIES = (SHAPES_FAMILY, OBJECTS_FAMILY)  # the demo's first: the CLI's default and the first in its help


def families() -> dict[str, Family]:
    """Every synthetic family by its CLI name, the demo's first."""
    return {f.name: f for f in _FAMILIES}


__all__ = ["CAPTIONS_PER_IMAGE", "DEFAULT_COUNT", "DEFAULT_IMAGE_SIZE", "DEFAULT_SPLITS", "META_FILE", "OBJECTS_FAMILY",
           "SHAPES_FAMILY", "SPLITS", "Family", "SyntheticError", "annotations_file", "families", "generate_synthetic",
           "is_complete", "split_sizes"]
