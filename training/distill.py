"""Knowledge distillation: a trained capkit run (the teacher) lends its per-step word distributions to
the model being trained (the student) as soft targets beside the references.

The student's objective per real token is ``(1 - w) * CE(student, reference) + w * T^2 * KL(teacher_T ||
student_T)``, where ``_T`` is softmax(logits / T) (Hinton et al., 2015: the T^2 keeps the soft term's
gradient on the scale of the hard one as T grows). The teacher reads the same batch under teacher forcing,
so its distribution at each step is over the same next word as the reference's. Teacher and student may
differ in everything but the vocabulary (the rows of the distributions must name the same words) and the
normalisation (the batch holds one set of pixels); either mismatch is refused in one line before training. Where
both use their images whole (synthetic data) at different sides, the teacher reads the batch resized to its own
(the edge student reads the demo's 64-pixel images at 128, its teacher at 64).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from capkit.runtime.errors import CapkitError
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import Vocabulary


SIZE_KEYS = ("resize", "crop")  # a teacher of another input size reads the batch resized, if images are used whole


class DistillationError(CapkitError):
    """The teacher cannot teach this student (another vocabulary or preprocessing, an unreadable run)."""


@dataclass
class Teacher:
    """A trained model in eval mode, frozen, on the student's device; where it came from, for the log."""

    model: torch.nn.Module
    path: Path
    size: Optional[int] = None  # the teacher's input side where it is not the student's: the batch is resized

    @torch.no_grad()
    def logits(self, images: torch.Tensor, inputs: torch.Tensor, owners: Optional[torch.Tensor]) -> torch.Tensor:
        """The teacher's teacher-forced logits (N, T, V) for the batch the student reads (N', 3, S, S)."""
        if self.size is not None and images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True,
                                   align_corners=False)  # (N', 3, size, size)
        return self.model(images, inputs, owners)  # (N, T, V)


def load_teacher(run_or_checkpoint: str, vocab: Vocabulary, spec: PreprocessSpec, device: torch.device) -> Teacher:
    """The teacher of ``run_or_checkpoint`` (a run folder: its best.pt), checked against the student's
    vocabulary and preprocessing."""
    from capkit.training.checkpoint import load_model

    model, teacher_vocab, teacher_spec, payload = load_model(run_or_checkpoint, device=device)
    path = Path(payload["path"])
    if tuple(teacher_vocab.words) != tuple(vocab.words):
        raise DistillationError(f"--teacher {path}: its vocabulary is not the student's ({_vocab_difference(teacher_vocab, vocab)}); "
                                "distil on the data the teacher was trained on, with its --min-count")
    differ = [f"{key} {getattr(teacher_spec, key)} (the student's: {getattr(spec, key)})" for key in PreprocessSpec.KEYS
              if key not in SIZE_KEYS and _value(teacher_spec, key) != _value(spec, key)]
    if differ:
        raise DistillationError(f"--teacher {path}: it reads images otherwise: {', '.join(differ)}; distil on the "
                                "data the teacher was trained on, with its backbone's normalisation")
    whole = [s.resize == s.crop for s in (teacher_spec, spec)]
    if (teacher_spec.resize, teacher_spec.crop) != (spec.resize, spec.crop) and not all(whole):
        raise DistillationError(f"--teacher {path}: it reads images at resize {teacher_spec.resize}, crop "
                                f"{teacher_spec.crop} (the student's: {spec.resize}, {spec.crop}); another size is "
                                "taught only to images used whole (resize = crop); give the student the teacher's "
                                "--image-size")
    size = teacher_spec.crop if teacher_spec.crop != spec.crop else None
    model.requires_grad_(False)
    return Teacher(model.eval(), path, size)


def _vocab_difference(teacher: Vocabulary, student: Vocabulary) -> str:
    """How two vocabularies differ, in a few words."""
    only = [(who, [w for w in a.words if w not in b]) for who, a, b in (("teacher", teacher, student),
                                                                       ("student", student, teacher))]
    said = [f"{len(words)} words only the {who}'s, such as {words[0]!r}" for who, words in only if words]
    return "; ".join(said) or "the same words in another order"


def _value(spec: PreprocessSpec, key: str):
    value = getattr(spec, key)
    return tuple(value) if isinstance(value, (list, tuple)) else value


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, pad_id: int,
                     temperature: float) -> torch.Tensor:
    """T^2 x KL(softmax(teacher / T) || softmax(student / T)), summed over the real tokens (padding ignored):
    student and teacher logits (N, T, V), targets (N, T)."""
    real = targets != pad_id  # (N, T)
    log_student = F.log_softmax(student[real] / temperature, dim=-1)  # (K, V)
    log_teacher = F.log_softmax(teacher[real] / temperature, dim=-1)  # (K, V)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="sum")  # ()
    return kl * temperature ** 2


__all__ = ["DistillationError", "Teacher", "load_teacher", "soft_target_loss"]
