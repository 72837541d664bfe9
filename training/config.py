"""The training run's configuration: a plain dataclass, importable without torch (the CLI reads its
defaults from here, and the resolved configuration is saved inside every checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from capkit.runtime.bundle import RUNS_DIR
from capkit.training.synthetic import DEFAULT_COUNT

LR_SCHEDULES = ("cosine", "constant")
MIN_EPOCHS = 8  # a run's epochs when not told: at least this many ...
MIN_STEPS = 960  # ... and at least this many optimiser steps (the demo's 8 x 120): small datasets get more passes


def default_epochs(steps_per_epoch: int, minimum: Optional[int] = None) -> int:
    """The epochs of a run not told how many: ``minimum`` (a preset's; None: MIN_EPOCHS), or more where that many
    epochs make fewer than MIN_STEPS steps (``steps_per_epoch``: the training loader's batches)."""
    return max(minimum or MIN_EPOCHS, -(-MIN_STEPS // max(1, steps_per_epoch)))


@dataclass
class TrainConfig:
    data: Optional[str] = None  # dataset source (see datasets.load_dataset); None: the built-in synthetic set
    image_dir: Optional[str] = None  # image folder, for sources that need one (COCO JSON, Flickr token file)
    synthetic_count: int = DEFAULT_COUNT  # images in the generated synthetic set (80/10/10 split)
    preset: Optional[str] = None  # models.presets name (default | seed | edge): the model's sizes when not given one by
    # one, and export's default (edge: int8 too); saved here so that `capkit export` knows it
    image_size: Optional[int] = None  # square input side; None: the backbone's own preset (64 for synthetic)
    epochs: Optional[int] = None  # passes over the training images; None: default_epochs(), at least MIN_EPOCHS (or the
    # preset's min_epochs) and
    # at least MIN_STEPS optimiser steps (the demo data: 8 x 120 steps; the objects family's 75-step epochs: 13).
    # On the demo data, seed 0's greedy captions state their scene exactly right for 94.6% of test images after 6
    # epochs and 99.8% after 8 (docs/fact-accuracy.md); a smaller set needs more passes for as many steps
    batch_size: int = 32  # images per step; each brings captions_per_image of its captions
    captions_per_image: Optional[int] = None  # None: all of them (five on the synthetic set and COCO); n: a fresh
    # random subset of n per epoch. The image is encoded once for all of them. With 2 the image gets two captions'
    # gradient a step, and one seed in four sat on a plateau with the colours confused (reports/seed_sweep.py)
    lr: float = 1e-3  # Adam, the seed's Table 1
    weight_decay: float = 1e-5  # L2 penalty, the seed's Table 1
    lr_schedule: str = "cosine"  # constant (the seed's) | cosine: decays to 0 over the run, a surer finish
    warmup_epochs: float = 0.0  # linear learning-rate warm-up, in epochs (fractions allowed), before the schedule
    grad_clip: float = 5.0  # max gradient norm; keeps recurrent training stable
    min_count: int = 1  # words seen fewer times map to <unk> (5 is usual for COCO)
    max_length: int = 20  # longest training caption (tokens after <start>) and default decoding length
    bleu_images: int = 48  # validation images captioned greedily after each epoch for history's val_bleu4 (0: off);
    # a few dozen cost about a second on a CPU and show quality, which the loss alone does not
    teacher: Optional[str] = None  # a trained run (or checkpoint) whose per-step word distributions the model learns
    # beside the references (training/distill.py); same vocabulary and preprocessing, any architecture
    distill_temperature: float = 2.0  # softens both distributions before they are compared: above 1, the teacher's
    # ranking of the wrong words (a circle is nearer a ring than a star) carries weight too
    distill_weight: float = 0.5  # the soft targets' share of the loss, the references' is the rest (1: teacher only)
    patience: Optional[int] = None  # stop after this many epochs without a better validation loss
    cache_features: bool = False  # with a frozen encoder: compute backbone features once, train on them
    encoder_weights: Optional[str] = None  # local weights file for the backbone (weights_only load)
    embeddings: Optional[str] = None  # GloVe / word2vec text file for the word embedding
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0  # model init, data order, synthetic data
    max_steps: Optional[int] = None  # stop after this many optimiser steps (smoke tests)
    out: str = str(RUNS_DIR)  # runs folder
    name: Optional[str] = None  # run folder name; default: encoder-decoder-timestamp
    progress: bool = True  # progress bars (rank 0 only)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        renamed = {"images": "image_dir"}  # names in checkpoints written before the rename
        values = {renamed.get(k, k): v for k, v in data.items() if renamed.get(k, k) in known}
        return cls(**values)


__all__ = ["LR_SCHEDULES", "TrainConfig"]
