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

import json
import os
from pathlib import Path
from typing import Optional

from capkit.training.synthetic.facts import FactCheck, scene_records
from capkit.training.synthetic.family import (CAPTIONS_PER_IMAGE, DEFAULT_SPLITS, META_FILE, SPLITS, Family,
                                              SyntheticError, annotations_file, split_sizes)
from capkit.training.synthetic.objects import OBJECTS_FAMILY
from capkit.training.synthetic.shapes import (DEFAULT_COUNT, DEFAULT_IMAGE_SIZE, SHAPES_FAMILY, generate_synthetic,
                                              is_complete)

_FAMILIES = (SHAPES_FAMILY, OBJECTS_FAMILY)  # the demo's first: the CLI's default and the first in its help


def families() -> dict[str, Family]:
    """Every synthetic family by its CLI name, the demo's first."""
    return {f.name: f for f in _FAMILIES}


def family_of(folder: str | os.PathLike) -> Optional[Family]:
    """The synthetic family that wrote ``folder`` (its meta.json's generator), or None (COCO, a foreign folder)."""
    try:
        meta = json.loads((Path(folder) / META_FILE).read_text())
        generator = meta["params"]["generator"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return next((f for f in _FAMILIES if f.generator == generator), None)


def fact_check(folder: str | os.PathLike, split: str) -> Optional[FactCheck]:
    """The scenes of ``split`` in a synthetic family's ``folder``, with the family's fact reader; None for data
    that records no scenes (fact accuracy is then absent, not zero)."""
    family = family_of(folder)
    if family is None or family.facts is None or split not in SPLITS:
        return None
    try:
        scenes = scene_records(annotations_file(folder, split))
    except (OSError, ValueError):
        return None
    return FactCheck(family.facts, scenes) if scenes else None


__all__ = ["CAPTIONS_PER_IMAGE", "DEFAULT_COUNT", "DEFAULT_IMAGE_SIZE", "DEFAULT_SPLITS", "META_FILE", "OBJECTS_FAMILY",
           "SHAPES_FAMILY", "SPLITS", "FactCheck", "Family", "SyntheticError", "annotations_file", "fact_check", "families",
           "family_of", "generate_synthetic", "is_complete", "split_sizes"]
