"""From caption records to training batches: torchvision transforms from the shared spec, a
dataset that skips unreadable images, a collate that encodes each image once for all its captions,
and the optional cache of frozen-backbone features."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from capkit.runtime.image_files import ImageError, load_image
from capkit.runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from capkit.runtime.vocab import PAD_ID, Vocabulary
from capkit.training.datasets import CaptionedImage, load_dataset
from capkit.training.synthetic import (DEFAULT_COUNT, DEFAULT_IMAGE_SIZE, META_FILE, family_of,
                                      generate_synthetic)

SYNTHETIC = "synthetic"
CACHE_ENV = "CAPKIT_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "capkit")


def synthetic_dir(count: int, seed: int, image_size: int, tag: str = "") -> Path:
    """The cache folder of a synthetic set; ``tag``: its family's ``cache_tag`` ("" for the demo family)."""
    return cache_dir() / f"synthetic{'-' + tag if tag else ''}-n{count}-s{seed}-px{image_size}"


def resolve_dataset(data: Optional[str], images: Optional[str] = None, *, synthetic_count: int = DEFAULT_COUNT,
                    synthetic_seed: int = 0, synthetic_size: int = DEFAULT_IMAGE_SIZE,
                    progress: bool = True) -> tuple[str, dict[str, list[CaptionedImage]]]:
    """(source, splits): ``data`` None or "synthetic" generates the built-in set into the cache first."""
    if data in (None, SYNTHETIC):
        folder = synthetic_dir(synthetic_count, synthetic_seed, synthetic_size)
        generate_synthetic(folder, count=synthetic_count, seed=synthetic_seed, image_size=synthetic_size,
                           progress=progress)
        data = str(folder)
    return data, load_dataset(data, images)


def synthetic_image_size(source: str) -> Optional[int]:
    """The input side a run uses on a synthetic family's folder (:meth:`Family.input_size` of the side its
    meta.json records), None for other sources (COCO, a foreign folder: the backbone's own preprocessing)."""
    family = family_of(source)
    try:
        side = int(json.loads((Path(source) / META_FILE).read_text())["params"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return family.input_size(side) if family is not None and side > 0 else None


def spec_for_backbone(encoder: str, image_size: Optional[int] = None, resize: Optional[int] = None) -> PreprocessSpec:
    """The backbone's own transforms from torchvision's weights API; ``image_size`` overrides the sizes
    (no resize margin: small synthetic images are used whole); else ``resize`` (a model preset's)
    replaces the backbone's resize before the same crop."""
    if image_size is not None:
        return PreprocessSpec(resize=image_size, crop=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    preset = torchvision.models.get_model_weights(encoder).DEFAULT.transforms()
    return PreprocessSpec(resize=resize or int(preset.resize_size[0]), crop=int(preset.crop_size[0]), mean=tuple(preset.mean),
                          std=tuple(preset.std), interpolation=preset.interpolation.value)


def torchvision_transform(spec: PreprocessSpec) -> torchvision.transforms.Compose:
    """The training transforms for ``spec``; runtime.preprocess reproduces them in numpy and Pillow."""
    t = torchvision.transforms
    return t.Compose([
        t.Resize(spec.resize, interpolation=InterpolationMode(spec.interpolation)),
        t.CenterCrop(spec.crop),
        t.ToTensor(),
        t.Normalize(spec.mean, spec.std),
    ])


def encode_caption(vocab: Vocabulary, caption: str, max_length: int) -> list[int]:
    """<start> w1 .. wn <end>, cut to at most ``max_length`` tokens after <start>."""
    ids = vocab.encode(caption)
    return ids[: max_length + 1]


class CaptionedImages(Dataset):
    """Item i: (image tensor or None if unreadable, encoded captions, image path, error or None).

    ``captions_per_image``: how many of an image's captions an item brings (None: all). With
    ``sample`` they are a fresh random subset each epoch (:meth:`set_epoch`), drawn from
    ``default_rng((seed, epoch, i))``, so that every caption is used over the epochs and a resumed
    or distributed run draws the same ones; without it, the first ones."""

    def __init__(self, records: Sequence[CaptionedImage], vocab: Vocabulary, spec: PreprocessSpec, max_length: int,
                 captions_per_image: Optional[int] = None, features: Optional[torch.Tensor] = None,
                 sample: bool = False, seed: int = 0):
        self.records = list(records)
        self.per_image = captions_per_image
        self.sample, self.seed, self.epoch = sample, seed, 0
        kept = None if sample else captions_per_image  # sampling draws from all of them
        self.captions = [[torch.tensor(encode_caption(vocab, c, max_length)) for c in r.captions[:kept]]
                         for r in self.records]
        self.transform = torchvision_transform(spec)
        self.features = features  # (N, F) cached backbone features, rows aligned with records (NaN row: unreadable)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def captions_of(self, i: int) -> list[torch.Tensor]:
        captions = self.captions[i]
        if not self.sample or self.per_image is None or len(captions) <= self.per_image:
            return captions
        chosen = np.random.default_rng((self.seed, self.epoch, i)).choice(len(captions), self.per_image, replace=False)
        return [captions[j] for j in sorted(chosen)]

    def __getitem__(self, i: int):
        path = str(self.records[i].image)
        captions = self.captions_of(i)
        if self.features is not None:
            row = self.features[i]  # (F,)
            return (None if torch.isnan(row[0]) else row), captions, path, None
        try:
            return self.transform(load_image(path)), captions, path, None  # (3, H, W)
        except ImageError as e:
            return None, captions, path, str(e)


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) pixels, or (B, F) cached features
    inputs: torch.Tensor  # (N, T) <start> w1 .. wn, padded
    targets: torch.Tensor  # (N, T) w1 .. wn <end>, padded
    owners: torch.Tensor  # (N,) image row of each caption
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable images left out

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.images.to(device, non_blocking=True), self.inputs.to(device, non_blocking=True),
                     self.targets.to(device, non_blocking=True), self.owners.to(device, non_blocking=True), self.skipped)


def collate(items, pad_id: int = PAD_ID) -> Optional[Batch]:
    good = [it for it in items if it[0] is not None]
    skipped = [(path, error or "unreadable") for image, _, path, error in items if image is None]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, 1, dtype=torch.long), torch.empty(0, 1, dtype=torch.long),
                     torch.empty(0, dtype=torch.long), skipped)
    captions = [c for _, caps, _, _ in good for c in caps]
    owners = torch.tensor([i for i, (_, caps, _, _) in enumerate(good) for _ in caps])  # (N,)
    padded = torch.nn.utils.rnn.pad_sequence(captions, batch_first=True, padding_value=pad_id)  # (N, T+1)
    return Batch(torch.stack([it[0] for it in good]), padded[:, :-1], padded[:, 1:], owners, skipped)


@torch.inference_mode()
def compute_features(model_encoder, records: Sequence[CaptionedImage], spec: PreprocessSpec, device: torch.device,
                     batch_size: int = 64, progress: bool = True, desc: str = "features") -> torch.Tensor:
    """The frozen backbone's features of every record, (N, F); rows of unreadable images are NaN."""
    dataset = CaptionedImages(records, Vocabulary.build([]), spec, max_length=1, captions_per_image=0)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=lambda items: items)
    model_encoder.eval()
    rows: list[torch.Tensor] = []
    for items in tqdm(loader, desc=desc, disable=not progress, leave=False):
        good = [i for i, it in enumerate(items) if it[0] is not None]
        out = torch.full((len(items), model_encoder.feature_dim), float("nan"))  # (b, F)
        if good:
            pixels = torch.stack([items[i][0] for i in good]).to(device)  # (g, 3, H, W)
            out[good] = model_encoder.features(pixels).float().cpu()  # (g, F)
        for it in items:
            if it[0] is None:
                warnings.warn(f"skipping unreadable image: {it[3]}")
        rows.append(out)
    return torch.cat(rows) if rows else torch.empty(0, model_encoder.feature_dim)
