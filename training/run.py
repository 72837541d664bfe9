"""One training run's state and its steps: the data, a fresh model or a checkpoint's, the optimiser,
DistributedDataParallel when started by torchrun (``RANK`` set; only rank 0 writes), the loaders, one
epoch of teacher-forced training (cross-entropy over real tokens, Adam with L2, the learning-rate
schedule), validation loss, greedy BLEU-4 on a validation subset, and the checkpoint payload.
:func:`capkit.training.train.train` drives it epoch by epoch."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from capkit.models import CaptionModel, CaptionModelConfig, presets
from capkit.runtime.errors import CapkitError, Status
from capkit.runtime.vocab import MIN_VOCAB_SIZE, SPECIAL_TOKENS, Vocabulary
from capkit.training.checkpoint import (LAST, checkpoint_payload, load_checkpoint, model_from_payload,
                                        resolve_checkpoint, save_checkpoint)
from capkit.training.config import LR_SCHEDULES, TrainConfig, default_epochs
from capkit.training.distill import Teacher, load_teacher, soft_target_loss
from capkit.training.synthetic import fact_check
from capkit.training.data import (Batch, CaptionedImages, collate, compute_features, resolve_dataset,
                                  spec_for_backbone, synthetic_image_size)
from capkit.training.torch_inference import resolve_torch_device

# The options a resumed run may change; it keeps its saved values of the others.
RESUME_OVERRIDES = ("epochs", "patience", "max_steps", "device", "progress", "num_workers", "bleu_images")


class TrainingError(CapkitError):
    """Training stopped on a problem (non-finite loss, bad data, bad options); one line."""


@dataclass
class Distributed:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""

    rank: int = 0  # this process's place among all of them; 0 writes the files
    world_size: int = 1  # processes in all
    local_rank: int = 0  # this process's GPU on its machine

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or "RANK" in os.environ

    @property
    def master(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        if "RANK" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))

    def setup(self, device: torch.device) -> torch.device:
        if not self.enabled:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return device

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def teardown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def token_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over real tokens, number of real tokens); padding is ignored."""
    total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id, reduction="sum")  # ()
    return total, (targets != pad_id).sum()


def learning_rate(step: int, peak: float, schedule: str, total: int, warmup: int = 0) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``: a linear warm-up from
    peak/warmup to ``peak`` over the first ``warmup`` steps, then ``peak`` (constant) or a cosine decay
    from ``peak`` to 0 at ``total`` (cosine)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _build_model(config: TrainConfig, model_config: CaptionModelConfig, vocab: Vocabulary, status: Status) -> CaptionModel:
    model = CaptionModel(model_config, encoder_weights=config.encoder_weights)
    if config.embeddings:
        from capkit.training.embeddings import load_word_vectors

        vectors, coverage, found = load_word_vectors(config.embeddings, vocab, model_config.embed_dim)
        with torch.no_grad():
            model.embed.weight.copy_(vectors)
        status(f"embeddings: {found} of {len(vocab) - len(SPECIAL_TOKENS)} vocabulary words found in {config.embeddings} ({coverage:.1%})")
    return model


def _resumed_config(config: TrainConfig, payload: dict[str, Any],
                    overrides: Optional[Sequence[str]]) -> tuple[TrainConfig, dict[str, Any]]:
    """(the checkpoint's saved configuration but for the fields ``overrides`` names, taken from
    ``config``; those of them that differ from the saved ones). None: all of RESUME_OVERRIDES."""
    changed = RESUME_OVERRIDES if overrides is None else tuple(overrides)
    refused = [name for name in changed if name not in RESUME_OVERRIDES]
    if refused:
        raise TrainingError(f"--{refused[0].replace('_', '-')} cannot change when resuming (the run keeps its "
                            f"own); a resumed run may change {', '.join(RESUME_OVERRIDES)}")
    saved = TrainConfig.from_dict(payload["train_config"])
    if config.epochs is None:  # not told: the run's own resolved count stays
        changed = tuple(k for k in changed if k != "epochs")
    overridden = {k: getattr(config, k) for k in changed if getattr(config, k) != getattr(saved, k)}
    return dataclasses.replace(saved, **{k: getattr(config, k) for k in changed}), overridden


class TrainingRun:
    """One training run's state, set up in named steps: the data, then a fresh model
    (:meth:`_start_fresh`) or the one a checkpoint holds (:meth:`_restore`), then the optimiser,
    the DDP wrapper and the loaders (:meth:`_prepare`). ``train()`` drives it."""

    def __init__(self, config: TrainConfig, model_config: Optional[CaptionModelConfig], resume: Optional[Path],
                 status: Status, overrides: Optional[Sequence[str]] = None):
        self.dist = Distributed.from_env()
        self.status = status if self.dist.master else (lambda *_: None)
        self.device = self.dist.setup(resolve_torch_device(config.device))
        payload = load_checkpoint(resolve_checkpoint(resume, LAST)) if resume is not None else None
        self.overridden: dict[str, Any] = {}  # what a resumed run changed of its saved configuration
        if payload is not None:  # the saved configuration, but for the options given to change it
            config, self.overridden = _resumed_config(config, payload, overrides)
        if config.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(f"unknown learning-rate schedule {config.lr_schedule!r}; one of {', '.join(LR_SCHEDULES)}")
        self.config = config
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.source, self.splits = self._load_data()
        self.val_facts = fact_check(self.source, "val")  # synthetic data: the validation scenes; else None
        self.epoch, self.step, self.best_val_loss, self.history = 0, 0, math.inf, []
        if payload is None:
            try:
                preset = presets.preset(config.preset)
            except ValueError as e:
                raise TrainingError(str(e)) from None
            self._start_fresh(model_config or CaptionModelConfig(vocab_size=MIN_VOCAB_SIZE, **preset.model))
        else:
            self._restore(payload, resume)
        if config.cache_features and not self.model_config.freeze_encoder:
            raise TrainingError("--cache-features needs --freeze-encoder (features of a trained backbone change)")
        self.teacher = self._teacher()
        self._prepare(payload)

    def _teacher(self) -> Optional[Teacher]:
        """The run that lends its word distributions (``config.teacher``), checked against this one; None without."""
        config = self.config
        if config.teacher is None:
            return None
        if config.cache_features:
            raise TrainingError("--teacher needs the images themselves, not --cache-features (the teacher has its own "
                                "backbone)")
        if not (math.isfinite(config.distill_temperature) and config.distill_temperature > 0):
            raise TrainingError(f"--distill-temperature must be above 0, got {config.distill_temperature}")
        if not 0 <= config.distill_weight <= 1:
            raise TrainingError(f"--distill-weight must be from 0 to 1, got {config.distill_weight}")
        teacher = load_teacher(config.teacher, self.vocab, self.spec, self.device)
        # the checkpoint itself, saved with the run: `runs/latest` moves on, a resumed run keeps its teacher
        self.config = dataclasses.replace(config, teacher=str(teacher.path.resolve()))
        return teacher

    def _load_data(self) -> tuple[str, dict[str, list]]:
        """(source, splits); rank 0 generates the synthetic set (if needed) while the others wait."""
        config = self.config
        if self.dist.enabled and not self.dist.master:
            dist.barrier()
        source, splits = resolve_dataset(config.data, config.image_dir, synthetic_count=config.synthetic_count,
                                         synthetic_seed=config.seed, progress=config.progress and self.dist.master)
        if self.dist.enabled and self.dist.master:
            dist.barrier()
        for split in ("train", "val"):
            if not splits.get(split):
                raise TrainingError(f"{source}: the {'training' if split == 'train' else 'validation'} split is empty")
        return source, splits

    def _start_fresh(self, model_config: CaptionModelConfig) -> None:
        """A new vocabulary from the training captions, the backbone's preprocessing, a new model and run name."""
        self.vocab = Vocabulary.build((c for r in self.splits["train"] for c in r.captions), self.config.min_count)
        self.model_config = dataclasses.replace(model_config, vocab_size=len(self.vocab))
        preset = presets.preset(self.config.preset)
        image_size = self.config.image_size or synthetic_image_size(self.source)  # synthetic images are used whole
        if image_size is not None and self.config.image_size is None and preset.min_image_size:
            image_size = max(image_size, preset.min_image_size)
        self.spec = spec_for_backbone(self.model_config.encoder, image_size, preset.resize)
        self.model = _build_model(self.config, self.model_config, self.vocab, self.status)
        self.name = self.config.name or time.strftime(
            f"{self.model_config.encoder}-{self.model_config.decoder}-%Y%m%d-%H%M%S")
        self.run_dir = Path(self.config.out) / self.name

    def _restore(self, payload: dict[str, Any], resume: Path) -> None:
        """Vocabulary, preprocessing, model weights, counters and RNG state from the checkpoint; the run
        folder is the one the checkpoint is in."""
        self.model, self.vocab, self.spec = model_from_payload(payload, resume)  # checked, one-line errors
        self.model_config = self.model.config
        self.epoch, self.step = payload["epoch"], payload["step"]
        self.best_val_loss, self.history = payload["best_val_loss"], payload["history"]
        self.name = payload["run_name"]
        self.run_dir = resume if resume.is_dir() else resume.parent
        _set_rng_state(payload["rng"])

    def _prepare(self, payload: Optional[dict[str, Any]]) -> None:
        """The model on its device, the optimiser (its state too, when resuming), DDP and the loaders."""
        self.model.to(self.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=self.config.lr, weight_decay=self.config.weight_decay)
        if payload is not None:
            self.optimizer.load_state_dict(payload["optimizer"])
        self.ddp_model = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                                  else None) if self.dist.enabled else self.model)
        self.skipped: dict[str, str] = {}
        self.loaders = {split: self._loader(split) for split in ("train", "val")}
        if self.config.epochs is None:  # resolved once and saved with the run: a resumed run keeps the count
            minimum = presets.preset(self.config.preset).min_epochs
            self.config = dataclasses.replace(self.config, epochs=default_epochs(len(self.loaders["train"]), minimum))

    def _loader(self, split: str) -> DataLoader:
        features = None
        if self.config.cache_features:
            features = compute_features(self.model.encoder, self.splits[split], self.spec, self.device,
                                        progress=self.config.progress and self.dist.master, desc=f"{split} features")
        train = split == "train"  # validation scores every caption, the same ones each epoch
        dataset = CaptionedImages(self.splits[split], self.vocab, self.spec, self.config.max_length,
                                  self.config.captions_per_image if train else None, features,
                                  sample=train, seed=self.config.seed)
        if self.dist.enabled:
            sampler = DistributedSampler(dataset, shuffle=split == "train", seed=self.config.seed)
        else:
            sampler = RandomSampler(dataset) if split == "train" else None
        # A last training batch of one image would break batch norm in train mode: drop the remainder.
        drop_last = split == "train" and len(dataset) // self.dist.world_size > self.config.batch_size
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda",
                          drop_last=drop_last)

    def _note_skipped(self, batch: Batch) -> None:
        for path, reason in batch.skipped:
            if path not in self.skipped:
                self.skipped[path] = reason
                if self.dist.master:
                    warnings.warn(f"skipping unreadable image: {reason}")

    def _loss(self, batch: Batch, teach: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the objective summed over real tokens, its cross-entropy part, the number of real tokens). With
        ``teach`` and a teacher the objective mixes in the teacher's soft targets (training/distill.py); the
        validation loss stays the references' cross-entropy, comparable across runs."""
        logits = self.ddp_model(batch.images, batch.inputs, batch.owners, features=self.config.cache_features)  # (N, T, V)
        cross_entropy, tokens = token_loss(logits, batch.targets, self.vocab.pad_id)
        if not (teach and self.teacher is not None):
            return cross_entropy, cross_entropy, tokens
        soft = soft_target_loss(logits, self.teacher.logits(batch.images, batch.inputs, batch.owners), batch.targets,
                                self.vocab.pad_id, self.config.distill_temperature)
        weight = self.config.distill_weight
        return (1 - weight) * cross_entropy + weight * soft, cross_entropy, tokens

    def train_epoch(self) -> tuple[float, bool]:
        """Mean training token loss of the epoch, and whether max_steps was reached."""
        self.model.train()
        loader = self.loaders["train"]
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(self.epoch)
        loader.dataset.set_epoch(self.epoch)  # which captions each image brings this epoch
        totals = torch.zeros(2, device=self.device)  # (loss sum, tokens)
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{self.config.epochs}", leave=False,
                   disable=not (self.config.progress and self.dist.master))
        for batch in bar:
            self._note_skipped(batch)
            if len(batch.images) < 2 and not self.config.cache_features:
                continue  # nothing left, or a single image (batch norm needs two in train mode)
            batch = batch.to(self.device)
            objective, loss_sum, tokens = self._loss(batch, teach=True)
            loss = objective / tokens.clamp(min=1)
            if self.dist.broadcast_flag(not torch.isfinite(loss).item(), self.device):
                raise TrainingError(f"loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}; "
                                    f"stopped, the last good checkpoint is {self.run_dir / LAST}")
            self._set_lr()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.step += 1
            totals += torch.stack([loss_sum.detach(), tokens.to(totals.dtype)])
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if self.config.max_steps is not None and self.step >= self.config.max_steps:
                break
        totals = self.dist.all_sum(totals)
        reached = self.config.max_steps is not None and self.step >= self.config.max_steps
        return (totals[0] / totals[1].clamp(min=1)).item(), reached

    def _set_lr(self) -> None:
        """The learning rate of this step, from the step count alone (so a resumed run continues it)."""
        per_epoch = len(self.loaders["train"])
        lr = learning_rate(self.step, self.config.lr, self.config.lr_schedule, self.config.epochs * per_epoch,
                           round(self.config.warmup_epochs * per_epoch))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        totals = torch.zeros(2, device=self.device)  # (loss sum, tokens)
        for batch in tqdm(self.loaders["val"], desc="validation", leave=False,
                          disable=not (self.config.progress and self.dist.master)):
            self._note_skipped(batch)
            if not len(batch.owners):
                continue
            _, loss_sum, tokens = self._loss(batch.to(self.device))
            totals += torch.stack([loss_sum, tokens.to(totals.dtype)])
        totals = self.dist.all_sum(totals)
        return (totals[0] / totals[1].clamp(min=1)).item()

    def greedy_scores(self) -> tuple[Optional[float], Optional[float]]:
        """Greedy BLEU-4 of the first ``bleu_images`` validation images (the same ones every epoch), and on
        synthetic data the share of their captions stating the scene exactly right (None elsewhere),
        through the runtime's own decoding loop over the PyTorch model; (None, None) when off or nothing
        is readable."""
        from capkit.runtime.captioner import Captioner
        from capkit.training.evaluate import EvaluationError, evaluate
        from capkit.training.torch_inference import TorchInference

        records = self.splits["val"][:self.config.bleu_images]
        if not records:
            return None, None
        captioner = Captioner.from_inference(TorchInference(self.model, self.device), self.vocab, self.spec,
                                             self.config.max_length)
        try:
            report = evaluate(captioner, records, (0.0,), progress=False, status=lambda _: None, ceiling=False,
                              facts=self.val_facts)
        except EvaluationError:
            return None, None
        return report[0].bleu4, (report[0].facts or {}).get("exact")

    def payload(self) -> dict[str, Any]:
        """The checkpoint: the model as :func:`checkpoint_payload` has it, and what resuming needs."""
        return checkpoint_payload(
            self.model, self.vocab, self.spec, self.config.max_length, train_config=asdict(self.config),
            run_name=self.name, data_source=self.source, epoch=self.epoch, step=self.step,
            best_val_loss=self.best_val_loss, history=self.history, optimizer=self.optimizer.state_dict(),
            rng=_rng_state())

    def save(self, *names: str) -> None:
        if not self.dist.master:
            return
        payload = self.payload()
        for name in names:
            save_checkpoint(payload, self.run_dir / name)


__all__ = ["RESUME_OVERRIDES", "Distributed", "TrainingError", "TrainingRun", "learning_rate", "token_loss"]
