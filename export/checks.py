"""The export check: the bundle is valid ONNX, loads in ONNX Runtime, and computes what PyTorch computes.

Parity is measured on >= 32 preprocessed images (synthetic ones, topped up to the minimum when the
user gives fewer files):
- the encoder's state and one decoder step (batch 1 and the whole batch): max abs error <= 1e-4;
- full greedy decoding: the same token sequence for every image, ONNX Runtime through
  :class:`~capkit.runtime.onnx_inference.OnnxInference` and PyTorch through
  :class:`~capkit.training.torch_inference.TorchInference`, both in the one ``decode`` loop;
- seeded temperature sampling: the same sequences too.

An ORT-format bundle (:mod:`capkit.export.ort_format`) is checked against the ONNX bundle it was
converted from (:func:`check_ort_bundle`): the same greedy and seeded-sampling token sequences on
the same >= 32 images, its sessions created with ``session.load_model_format = ORT``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from capkit.bulk.listing import expand_inputs
from capkit.models import CaptionModel
from capkit.runtime.bundle import Bundle
from capkit.runtime.decoding import DecodingOptions, DecodingResult, decode
from capkit.runtime.errors import first_line
from capkit.runtime.image_files import ImageError, ImageSource
from capkit.runtime.preprocess import PreprocessSpec, preprocess_batch
from capkit.training.torch_inference import TorchInference

TOLERANCE = 1e-4
MIN_IMAGES = 32
SAMPLING_TEMPERATURE = 0.7
SAMPLING_SEED = 0


def synthetic_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 RGB images of varied sizes: a flat background, a rectangle of another colour, mild noise.

    Different enough that even a random-weight CNN gives each a different state."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(24, 96, 2))
        a = np.empty((h, w, 3), np.int16)
        a[:] = rng.integers(0, 256, 3)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        a[y:y + int(rng.integers(h // 4, h // 2 + 1)), x:x + int(rng.integers(w // 4, w // 2 + 1))] = rng.integers(0, 256, 3)
        a += rng.integers(-12, 13, a.shape, dtype=np.int16)
        images.append(np.clip(a, 0, 255).astype(np.uint8))
    return images


def sample_images(spec: PreprocessSpec, files: Sequence[ImageSource] = (), minimum: int = MIN_IMAGES,
                  seed: int = 0) -> np.ndarray:
    """The user's images (paths, arrays, ...) topped up with synthetic ones to ``minimum``, preprocessed
    exactly as the runtime does it -> float32 (N, 3, crop, crop)."""
    sources = list(files) + synthetic_images(max(0, minimum - len(files)), seed)
    return preprocess_batch(sources, spec)  # (N, 3, H, W)


@dataclass
class ParityReport:
    images: int
    tolerance: float
    encoder_max_abs: float  # over every state tensor
    step_max_abs: dict[str, float]  # "batch 1" / "batch N": over logits and next state
    greedy_equal: int  # images whose greedy token sequences are identical
    greedy_distinct: int  # distinct greedy captions (a model that says the same for everything tests little)
    sampled_equal: int
    temperature: float
    seed: int
    logprob_max_abs: float  # over the greedy and sampled captions
    problems: list[str] = field(default_factory=list)  # checker / load failures

    @property
    def passed(self) -> bool:
        return (not self.problems and self.encoder_max_abs <= self.tolerance
                and all(e <= self.tolerance for e in self.step_max_abs.values())
                and self.greedy_equal == self.images and self.sampled_equal == self.images)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def render(self) -> str:
        steps = ", ".join(f"{e:.1e} ({batch})" for batch, e in self.step_max_abs.items())
        lines = [f"parity vs PyTorch on {self.images} images (tolerance {self.tolerance:g}):",
                 *(f"  PROBLEM: {p}" for p in self.problems),
                 f"  encoder state max abs err {self.encoder_max_abs:.1e}",
                 f"  decoder step max abs err {steps}",
                 f"  greedy sequences equal {self.greedy_equal}/{self.images} ({self.greedy_distinct} distinct"
                 + ("; one caption for every image makes this comparison weak)" if self.greedy_distinct < 2 else ")"),
                 f"  sampled sequences (T={self.temperature:g}, seed {self.seed}) equal {self.sampled_equal}/{self.images}",
                 f"  caption log-probability max abs diff {self.logprob_max_abs:.1e}",
                 f"  {'PASSED' if self.passed else 'FAILED'}"]
        return "\n".join(lines)


def check_graphs(bundle: Bundle) -> list[str]:
    """``onnx.checker`` (full check, with shape inference) on both graphs; one line per failure."""
    import onnx

    problems = []
    for path in (bundle.encoder_path, bundle.decoder_path):
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as e:  # ValidationError, InferenceError
            problems.append(f"{path.name}: onnx.checker: {first_line(e)}")
    return problems


def _max_abs(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(a, b))


def _numpy(state: Any) -> list[np.ndarray]:
    return [s.numpy() if hasattr(s, "numpy") else np.asarray(s) for s in state]


def _same(a: list[DecodingResult], b: list[DecodingResult]) -> tuple[int, float]:
    equal = sum(x.tokens == y.tokens for x, y in zip(a, b))
    logprob = max((abs(x.logprob - y.logprob) for x, y in zip(a, b) if x.tokens == y.tokens), default=0.0)
    return equal, logprob


def check_bundle(model: CaptionModel, bundle: Bundle, images: Optional[np.ndarray] = None, *,
                 tolerance: float = TOLERANCE, temperature: float = SAMPLING_TEMPERATURE, seed: int = SAMPLING_SEED,
                 checker: bool = True) -> ParityReport:
    """ONNX (CPU provider) against the PyTorch model on ``images`` (float32 (N, 3, H, W); None: 32 synthetic)."""
    from capkit.runtime.onnx_inference import OnnxInference

    manifest = bundle.manifest
    if images is None:
        images = sample_images(manifest.preprocess)
    images = np.ascontiguousarray(images, dtype=np.float32)  # (N, 3, H, W)
    problems = check_graphs(bundle) if checker else []
    try:
        onnx_inf = OnnxInference(bundle, device="cpu", io_binding=False)
    except Exception as e:  # BundleError with a one-line reason
        return ParityReport(len(images), tolerance, float("inf"), {}, 0, 0, 0, temperature, seed, float("inf"),
                            problems + [str(e)])
    torch_inf = TorchInference(model.eval(), next(model.parameters()).device)

    onnx_state, torch_state = onnx_inf.encode(images), _numpy(torch_inf.encode(images))  # each (L, N, H)
    encoder_err = _max_abs(onnx_state, torch_state)
    tokens = np.random.default_rng(seed).integers(0, len(manifest.vocab), len(images))  # (N,)
    step_err = {}
    for label, rows in (("batch 1", np.arange(1)), (f"batch {len(images)}", np.arange(len(images)))):
        state = [np.ascontiguousarray(s[:, rows]) for s in torch_state]  # the same input state for both
        logits, next_state = onnx_inf.step(tokens[rows], tuple(state))  # (B, V)
        ref_logits, ref_state = torch_inf.step(tokens[rows], tuple(torch.from_numpy(s).to(torch_inf.device) for s in state))
        step_err[label] = max(_max_abs([logits], [ref_logits]), _max_abs(next_state, _numpy(ref_state)))

    ids = manifest.vocab
    greedy = DecodingOptions(max_length=manifest.max_length)
    sampled = DecodingOptions(max_length=manifest.max_length, temperature=temperature, seed=seed)
    onnx_greedy = decode(onnx_inf, images, greedy, ids)
    greedy_equal, greedy_lp = _same(onnx_greedy, decode(torch_inf, images, greedy, ids))
    sampled_equal, sampled_lp = _same(decode(onnx_inf, images, sampled, ids), decode(torch_inf, images, sampled, ids))
    return ParityReport(
        images=len(images), tolerance=tolerance, encoder_max_abs=encoder_err, step_max_abs=step_err,
        greedy_equal=greedy_equal, greedy_distinct=len({r.tokens for r in onnx_greedy}), sampled_equal=sampled_equal,
        temperature=temperature, seed=seed, logprob_max_abs=max(greedy_lp, sampled_lp), problems=problems)


@dataclass
class OrtCheckReport:
    """An ORT-format bundle against the ONNX bundle it was converted from (:func:`check_ort_bundle`)."""
    images: int
    greedy_equal: int  # images whose greedy token sequences are identical
    greedy_distinct: int  # distinct greedy captions of the ONNX bundle
    sampled_equal: int
    temperature: float
    seed: int
    logprob_max_abs: float  # over the greedy and sampled captions that agree
    problems: list[str] = field(default_factory=list)  # load failures

    @property
    def passed(self) -> bool:
        return not self.problems and self.greedy_equal == self.images and self.sampled_equal == self.images

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def render(self) -> str:
        if self.problems:
            return "  ORT format vs ONNX: " + "; ".join(f"PROBLEM: {p}" for p in self.problems) + "\n  FAILED"
        return (f"  ORT format vs ONNX on {self.images} images (load_model_format=ORT): greedy sequences equal "
                f"{self.greedy_equal}/{self.images} ({self.greedy_distinct} distinct), sampled (T={self.temperature:g}, "
                f"seed {self.seed}) {self.sampled_equal}/{self.images}, log-probability max abs diff "
                f"{self.logprob_max_abs:.1e}: {'PASSED' if self.passed else 'FAILED'}")


def check_ort_bundle(reference: Bundle, ort_bundle: Bundle, images: Optional[np.ndarray] = None, *,
                     temperature: float = SAMPLING_TEMPERATURE, seed: int = SAMPLING_SEED) -> OrtCheckReport:
    """``ort_bundle`` (graph_format "ort") against ``reference`` (the ONNX bundle it was converted from),
    both on the CPU, on ``images`` (float32 (N, 3, H, W); None: 32 synthetic): greedy and seeded-sampling
    token sequences must be identical. The ORT-format sessions load their graphs with
    ``session.load_model_format = ORT`` only (OnnxInference does that for an "ort" manifest; checked here)."""
    from capkit.runtime.onnx_inference import OnnxInference
    from capkit.runtime.providers import LOAD_MODEL_FORMAT

    manifest = reference.manifest
    if images is None:
        images = sample_images(manifest.preprocess)
    images = np.ascontiguousarray(images, dtype=np.float32)  # (N, 3, H, W)
    failed = OrtCheckReport(len(images), 0, 0, 0, temperature, seed, float("inf"))
    if ort_bundle.manifest.graph_format != "ort":
        failed.problems.append(f"{ort_bundle.folder}: graph_format is {ort_bundle.manifest.graph_format!r}, not 'ort'")
        return failed
    try:
        ort_inf = OnnxInference(ort_bundle, device="cpu", io_binding=False)
        onnx_inf = OnnxInference(reference, device="cpu", io_binding=False)
    except Exception as e:  # BundleError with a one-line reason
        failed.problems.append(str(e))
        return failed
    def ort_only(options: Any) -> bool:
        try:
            return options.get_session_config_entry(LOAD_MODEL_FORMAT) == "ORT"
        except RuntimeError:  # not set
            return False

    unset = [graph for graph, options in ort_inf._options.items() if not ort_only(options)]
    if unset:
        failed.problems.append(f"{ort_bundle.folder}: the {', '.join(unset)} session was not created ORT-format-only")
        return failed
    ids = manifest.vocab
    greedy = DecodingOptions(max_length=manifest.max_length)
    sampled = DecodingOptions(max_length=manifest.max_length, temperature=temperature, seed=seed)
    onnx_greedy = decode(onnx_inf, images, greedy, ids)
    greedy_equal, greedy_lp = _same(decode(ort_inf, images, greedy, ids), onnx_greedy)
    sampled_equal, sampled_lp = _same(decode(ort_inf, images, sampled, ids), decode(onnx_inf, images, sampled, ids))
    return OrtCheckReport(len(images), greedy_equal, len({r.tokens for r in onnx_greedy}), sampled_equal, temperature,
                          seed, max(greedy_lp, sampled_lp))


def image_files(arguments: Sequence[str | os.PathLike]) -> list[str]:
    """The image files named by ``arguments`` (files, folders, patterns: :func:`~capkit.bulk.listing.expand_inputs`);
    an argument that names none is an error."""
    inputs = expand_inputs(arguments)
    for item in inputs:
        if item.error is not None:
            raise ImageError(item.error)
    return [item.path for item in inputs if item.path is not None]


__all__ = ["MIN_IMAGES", "OrtCheckReport", "ParityReport", "TOLERANCE", "check_bundle", "check_graphs",
           "check_ort_bundle", "image_files", "sample_images", "synthetic_images"]
