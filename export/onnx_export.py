"""PyTorch -> the bundle: two ONNX graphs (image step, decoder step) and ``capkit.json``.

Graph contract (docs/bundle.md has the full format):
- ``encoder.onnx``: ``image`` float32 (B, 3, H, W) -> the state, ``h`` (and ``c`` for an LSTM), each
  float32 (layers, B, hidden);
- ``decoder_step.onnx``: ``token`` int64 (B,) and the state -> ``logits`` float32 (B, V) and the
  next state, ``h_next`` (and ``c_next``), then the greedy choice ``next_token`` int64 (B,) =
  argmax(logits) and ``next_logprob`` float64 (B,), its log-softmax (see
  :func:`capkit.models.captioning.greedy_choice`): a greedy loop fetches these and never copies the
  vocabulary-sized logits out of the graph.
The batch axis is dynamic in both graphs.

Exporter choice. The TorchScript exporter (``dynamo=False``) is used for opsets below 18, so for
the default opset 17: with torch 2.15 the torch.export-based exporter only implements opset 18+
and converts down afterwards, and for a ResNet encoder that conversion fails (ReduceMean's axes):
torch silently keeps opset 18, and onnx's own version converter writes an invalid ReduceMean. The
TorchScript exporter writes the requested opset exactly, maps nn.LSTM/RNN/GRU to the ONNX
LSTM/RNN/GRU ops with the state as graph inputs (parity ~1e-7 for every batch size) and is about
ten times faster (0.4 s against 5 s for a ResNet-18 model). For ``opset >= 18`` (or
``dynamo=True``) the torch.export-based exporter is used; the tests check it too, so the switch is
ready for when the TorchScript exporter is removed.

Cell form (``cell``). "operator" (the default) exports the model's nn.LSTM/GRU/RNN as the ONNX
LSTM/GRU/RNN operator; "matmul" swaps :class:`~capkit.models.matmul_core.MatMulCore` in for the
core of the exported modules (the caller's model is not changed), so that both graphs compute the
cell with plain MatMul/Add/Sigmoid/Tanh nodes. The manifest's ``cell`` records which.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from capkit.export import DEFAULT_OPSET, MIN_OPSET
from capkit.models import CaptionModel, greedy_choice
from capkit.runtime.bundle import DECODER_FILE, DEFAULT_BUNDLE, ENCODER_FILE, Bundle, load_bundle, sha256_file
from capkit.runtime.decoding import DecodingOptions
from capkit.runtime.errors import CapkitError, check_int, first_line, is_int
from capkit.runtime.manifest import RECURRENT_CELLS, DecoderStepGraph, EncoderGraph, Manifest
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import Vocabulary

if TYPE_CHECKING:
    from capkit.export.checks import ParityReport
    from capkit.export.ort_format import OrtBundleReport
    from capkit.export.quantize import VariantReport

FIRST_DYNAMO_OPSET = 18  # the torch.export-based exporter implements opset 18 and later only
IMAGE_INPUT, TOKEN_INPUT, LOGITS_OUTPUT = "image", "token", "logits"
NEXT_TOKEN_OUTPUT, NEXT_LOGPROB_OUTPUT = "next_token", "next_logprob"
NEXT_SUFFIX = "_next"  # the decoder's state outputs: h -> h_next, c -> c_next
SINGLE_FILE_LIMIT = 1_900_000_000  # protobuf's 2 GB limit, with room for the graph itself
EXAMPLE_BATCH = 2  # not 1, so that no exporter can specialise the batch axis to 1


from capkit.export.staging import ExportError, staged_bundle  # noqa: E402  (ExportError lives torch-free there)


class EncoderModule(nn.Module):
    """image (B, 3, H, W) -> state tensors, each (layers, B, hidden): the ``encoder.onnx`` graph."""

    def __init__(self, model: CaptionModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.image_step(image))  # each (L, B, H)


class DecoderStepModule(nn.Module):
    """token (B,) and state tensors -> logits (B, V), the next state tensors and (``greedy``) the
    greedy token (B,) and its log-probability (B,): ``decoder_step.onnx``."""

    def __init__(self, model: CaptionModel, greedy: bool = True):
        super().__init__()
        self.model = model
        self.greedy = greedy

    def forward(self, token: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, next_state = self.model.step(token, tuple(state))  # (B, V)
        if not self.greedy:
            return (logits, *next_state)
        return (logits, *next_state, *greedy_choice(logits))  # ..., (B,) int64, (B,) float64


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silences the exporters' deprecation notices, LSTM batch-size hints and progress logging."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  output_names: list[str], batch_axes: dict[str, int], opset: int, dynamo: bool) -> None:
    """One module -> one ONNX file at ``path`` (plus external data files when the exporter writes them)."""
    with _quiet_exporter():
        if dynamo:
            batch = torch.export.Dim("batch")
            shapes = [{batch_axes[name]: batch} for name in input_names]  # in the order of forward's arguments
            dynamic_shapes = (shapes[0], tuple(shapes[1:])) if len(args) > 1 else (shapes[0],)
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=input_names, output_names=output_names,
                              dynamic_shapes=dynamic_shapes, opset_version=opset, external_data=True, verbose=False,
                              optimize=True)
        else:
            axes = {name: {axis: "batch"} for name, axis in batch_axes.items()}
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names, output_names=output_names,
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, verbose=False)


def _place_graph(staged: Path, target: Path) -> None:
    """Moves an exported graph into the bundle as one file, or, above protobuf's 2 GB limit, as
    ``<name>`` + ``<name>.data`` side by side (external data stays inside the bundle)."""
    extra = [p for p in staged.parent.iterdir() if p != staged]
    stale = target.with_name(target.name + ".data")
    if not extra:
        os.replace(staged, target)
        stale.unlink(missing_ok=True)
        return
    import onnx

    model = onnx.load(str(staged))  # reads the exporter's external data back in
    if model.ByteSize() < SINGLE_FILE_LIMIT:
        onnx.save_model(model, str(target))
        stale.unlink(missing_ok=True)
    else:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=stale.name, size_threshold=1024)


def check_cell(cell: Any) -> str:
    """``cell`` when RECURRENT_CELLS holds it; else one-line ExportError naming them."""
    if not isinstance(cell, str) or cell not in RECURRENT_CELLS:
        raise ExportError(f"unknown recurrent cell form {cell!r}; one of {', '.join(RECURRENT_CELLS)}")
    return cell


def with_cell(model: CaptionModel, cell: str) -> CaptionModel:
    """``model`` itself for "operator"; for "matmul" a shallow copy whose core is a MatMulCore of
    ``model.core`` (the same parameters, no copies), with its own table of submodules, so that
    ``model`` keeps its nn.LSTM/GRU/RNN."""
    if check_cell(cell) == "operator":
        return model
    from capkit.models.matmul_core import MatMulCore

    exported = copy.copy(model)
    exported._modules = dict(model._modules)  # copy.copy shares the dict: setting core would change model's
    exported.core = MatMulCore(model.core)
    return exported


def supported_opsets() -> range:
    """The opsets :func:`export_model` writes: MIN_OPSET to the newest that both torch's exporter and the installed
    onnx know. torch names its newest only in ``torch.onnx._constants`` (ONNX_MAX_OPSET); asked for a newer one,
    the torch.export-based exporter keeps opset 18 and says nothing."""
    import onnx
    from torch.onnx import _constants

    newest = min(_constants.ONNX_MAX_OPSET, onnx.defs.onnx_opset_version())
    return range(MIN_OPSET, newest + 1)


def check_opset(opset: Any) -> int:
    """``opset`` as an int when :func:`supported_opsets` holds it; else one-line ExportError naming the range."""
    opsets = supported_opsets()
    return check_int(opset, "opset", opsets.start, opsets.stop - 1, error=ExportError)


def graph_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _versions() -> dict[str, str]:
    import onnx

    from capkit import __version__

    versions = {"capkit": __version__, "torch": torch.__version__, "onnx": onnx.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions


def export_model(model: CaptionModel, vocab: Vocabulary, spec: PreprocessSpec, max_length: int,
                 out_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET, provenance: Optional[dict[str, Any]] = None,
                 dynamo: Optional[bool] = None, greedy_outputs: bool = True, force: bool = False,
                 cell: str = "operator") -> Bundle:
    """Writes ``encoder.onnx``, ``decoder_step.onnx`` and ``capkit.json`` into ``out_dir``; returns the loaded bundle.

    The bundle is built whole in a staging folder next to ``out_dir`` and swapped in only when
    complete (:mod:`capkit.export.staging`): a previous bundle there stays valid until then, a
    folder that is not a bundle is refused (``force``: the bundle's files are added next to the
    others), and no file capkit did not write is ever changed or removed.

    ``greedy_outputs``: the step graph also computes the greedy token and its log-probability
    (``next_token``, ``next_logprob``); False writes the plain contract of older bundles.

    ``dynamo`` None picks the exporter by opset (TorchScript below 18, torch.export from 18, see
    the module docstring). ``cell``: "operator" (the ONNX LSTM/GRU/RNN operator) or "matmul" (plain
    MatMul/Add/Sigmoid/Tanh; the module docstring), recorded in the manifest. The model is exported
    in eval mode on its own device; its training mode is restored afterwards.
    """
    if len(vocab) != model.config.vocab_size:
        raise ExportError(f"the vocabulary has {len(vocab)} words, the model {model.config.vocab_size}")
    opset = check_opset(opset)
    cell = check_cell(cell)
    use_dynamo = opset >= FIRST_DYNAMO_OPSET if dynamo is None else bool(dynamo)
    if use_dynamo and opset < FIRST_DYNAMO_OPSET:
        raise ExportError(f"the torch.export-based exporter writes opset {FIRST_DYNAMO_OPSET} or later, not {opset}")
    names = list(model.config.state_names)
    next_names = [n + NEXT_SUFFIX for n in names]
    greedy_names = [NEXT_TOKEN_OUTPUT, NEXT_LOGPROB_OUTPUT] if greedy_outputs else []
    device = next(model.parameters()).device
    with staged_bundle(out_dir, force=force) as staging:
        _write_graphs(model, vocab, spec, staging, names, greedy_names, opset, use_dynamo, device, cell)
        actual_opset = graph_opset(staging / ENCODER_FILE)
        if actual_opset != opset:  # an exporter that could not convert keeps its own opset, with a warning at most
            raise ExportError(f"asked for opset {opset}, the exporter wrote opset {actual_opset} (the default is "
                              f"{DEFAULT_OPSET})")
        manifest = Manifest(
            vocab=vocab, preprocess=spec, max_length=int(max_length),
            encoder=EncoderGraph(ENCODER_FILE, sha256_file(staging / ENCODER_FILE), IMAGE_INPUT, tuple(names)),
            decoder=DecoderStepGraph(DECODER_FILE, sha256_file(staging / DECODER_FILE), TOKEN_INPUT, tuple(names),
                                     LOGITS_OUTPUT, tuple(next_names), *(greedy_names or [None, None])),
            precision="fp32", model=model.config.to_dict(),
            provenance={"versions": _versions(), **(provenance or {}), "opset": actual_opset,
                        "exporter": "torch.export" if use_dynamo else "torchscript"},
            decoding=DecodingOptions(), cell=cell,
        )
        manifest.write(staging)
        load_bundle(staging)  # whole and consistent before it replaces anything
    return load_bundle(out_dir)


def _write_graphs(model: CaptionModel, vocab: Vocabulary, spec: PreprocessSpec, folder: Path, names: list[str],
                  greedy_names: list[str], opset: int, use_dynamo: bool, device: torch.device, cell: str) -> None:
    """Exports both graphs into ``folder`` (the staging folder), in eval mode, the core in the ``cell``
    form (:func:`with_cell`); the model's mode is restored."""
    next_names = [n + NEXT_SUFFIX for n in names]
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(EXAMPLE_BATCH, 3, spec.crop, spec.crop, generator=generator).to(device)  # (B, 3, H, W)
        tokens = torch.full((EXAMPLE_BATCH,), vocab.start_id, dtype=torch.long, device=device)  # (B,)
        with torch.no_grad():
            state = model.image_step(images)  # each (L, B, H)
        exported = with_cell(model, cell)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
            staged = {ENCODER_FILE: Path(tmp, "encoder") / ENCODER_FILE, DECODER_FILE: Path(tmp, "decoder") / DECODER_FILE}
            for path in staged.values():
                path.parent.mkdir()
            try:
                _export_graph(EncoderModule(exported).eval(), (images,), staged[ENCODER_FILE], [IMAGE_INPUT], names,
                              {IMAGE_INPUT: 0, **{n: 1 for n in names}}, opset, use_dynamo)
                _export_graph(DecoderStepModule(exported, greedy_names != []).eval(), (tokens, *state),
                              staged[DECODER_FILE], [TOKEN_INPUT, *names], [LOGITS_OUTPUT, *next_names, *greedy_names],
                              {TOKEN_INPUT: 0, LOGITS_OUTPUT: 0, **{n: 1 for n in names + next_names},
                               **{n: 0 for n in greedy_names}}, opset, use_dynamo)
            except CapkitError:
                raise
            except Exception as e:
                first = first_line(e)
                raise ExportError(f"torch.onnx.export failed ({type(e).__name__}: {first})") from e
            for name, path in staged.items():
                _place_graph(path, folder / name)
    finally:
        model.train(was_training)




# -- export_checkpoint: checkpoint -> bundle -> parity check -> int8 / fp16 variants ------------------------------
@dataclass
class ExportReport:
    bundle: str
    checkpoint: str
    opset: int
    exporter: str
    seconds: float
    parity: Optional["ParityReport"] = None  # None with check=False
    variants: list["VariantReport"] = field(default_factory=list)
    ort: list["OrtBundleReport"] = field(default_factory=list)  # --format ort: the ORT-format bundles
    cell: str = "operator"  # the recurrent cell's form in the graphs (the manifest's `cell`)

    @property
    def passed(self) -> bool:
        """False only when the parity check or an ORT-format check ran and failed (int8/fp16 are not
        held to parity)."""
        return (self.parity is None or self.parity.passed) and all(o.passed for o in self.ort)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "checkpoint": self.checkpoint, "opset": self.opset, "exporter": self.exporter,
                "cell": self.cell, "seconds": round(self.seconds, 2), "passed": self.passed,
                "parity": self.parity.to_dict() if self.parity is not None else None,
                "variants": [v.to_dict() for v in self.variants], "ort": [o.to_dict() for o in self.ort]}

    def render(self) -> str:
        lines = [f"exported {self.checkpoint} -> {self.bundle} (opset {self.opset}, {self.exporter} exporter, "
                 f"{self.cell} cell, {self.seconds:.1f}s)"]
        lines.append(self.parity.render() if self.parity is not None else "parity check skipped (--no-check)")
        lines += [v.render() for v in self.variants]
        lines += [o.render() for o in self.ort]
        return "\n".join(lines)


def _plain_name(value: Any) -> Optional[str]:
    """The last component of a path-like string (never a path: a bundle must not carry the training
    machine's folders), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    name = PurePath(value.replace("\\", "/")).name
    return name or None


def checkpoint_provenance(payload: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records about where the graphs came from, without a path of the machine
    that made it: the checkpoint as ``<run>/<file>`` (the run's name, else its folder's) and its
    sha256, the data source as a name only (``synthetic``, or the dataset folder's or file's name)."""
    best = payload.get("best_val_loss")
    best = float(best) if isinstance(best, (int, float)) and math.isfinite(best) else None
    path = Path(payload["path"]) if isinstance(payload.get("path"), str) else None
    run = _plain_name(payload.get("run_name"))
    checkpoint = None
    if path is not None:
        folder = run or _plain_name(path.resolve().parent.name)
        checkpoint = f"{folder}/{path.name}" if folder else path.name
    counters = {key: payload.get(key) if is_int(payload.get(key)) else None for key in ("epoch", "step")}
    return {
        "run": run,
        "checkpoint": checkpoint,
        "checkpoint_sha256": sha256_file(path) if path is not None and path.is_file() else None,
        **counters,
        "metrics": {"best_val_loss": best, "best_val_perplexity": math.exp(min(best, 50.0)) if best is not None else None},
        "data_source": _plain_name(payload.get("data_source")),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def default_bundle_dir(checkpoint: Path) -> Path:
    """``<run folder>/bundle`` of the real run folder (``runs/latest`` resolved), so that
    ``runs/latest/bundle`` keeps pointing at the newest run's bundle."""
    return checkpoint.resolve().parent / Path(DEFAULT_BUNDLE).name


def preset_quantization(payload: dict[str, Any]) -> Optional[str]:
    """The export default of the preset a checkpoint was trained with (None without one, or an unknown name)."""
    from capkit.models.presets import PRESETS

    train_config = payload.get("train_config")
    name = train_config.get("preset") if isinstance(train_config, dict) else None
    return PRESETS[name].quantize if isinstance(name, str) and name in PRESETS else None


def export_checkpoint(run_or_checkpoint: Optional[str | os.PathLike] = None, out_dir: Optional[str | os.PathLike] = None,
                      *, opset: int = DEFAULT_OPSET, check: bool = True, quantize: Optional[str] = None,
                      fp16: bool = False, parity_images: Sequence[str | os.PathLike] = (),
                      dynamo: Optional[bool] = None, force: bool = False, graph_format: str = "onnx",
                      ort_platform: str = "x86", cell: str = "operator") -> ExportReport:
    """A checkpoint (a ``.pt`` file, a run folder, or None for ``runs/latest``) -> an fp32 bundle in
    ``out_dir`` (None: ``<run folder>/bundle``, i.e. ``runs/latest/bundle`` for the newest run), its
    parity check against PyTorch, and with ``quantize="int8"`` / ``fp16=True`` the variants
    ``<out_dir>-int8`` / ``<out_dir>-fp16``; ``quantize=None`` takes the run's preset's default (the edge
    preset's is int8), ``"none"`` writes no int8 bundle. ``parity_images``: image files or folders, topped up with
    synthetic images to 32; they also calibrate int8. ``graph_format="ort"``: also the ORT-format
    bundles ``<out_dir>-ort`` (and ``<out_dir>-int8-ort`` with int8), checked against their ONNX
    source unless ``check`` is False (:mod:`capkit.export.ort_format`), converted for the CPU family
    ``ort_platform`` (x86 or arm: ``ORT_PLATFORMS``). ``cell``: the recurrent cell's form in the graphs,
    "operator" or "matmul" (:func:`export_model`); the variants keep it. Each folder is written as
    :func:`export_model` writes one (staged, swapped in whole; ``force``: see there)."""
    from capkit.export.checks import check_bundle, image_files, sample_images
    from capkit.export.quantize import write_variant
    from capkit.training.checkpoint import load_model, resolve_checkpoint

    if quantize not in (None, "int8", "none"):
        raise ExportError(f"unknown quantization {quantize!r}; int8 (or none) is the one there is")
    if graph_format not in ("onnx", "ort"):
        raise ExportError(f"unknown graph format {graph_format!r}; onnx or ort")
    from capkit.export.ort_format import ORT_PLATFORMS

    if ort_platform not in ORT_PLATFORMS:
        raise ExportError(f"unknown ORT-format platform {ort_platform!r}; one of {', '.join(ORT_PLATFORMS)}")
    opset = check_opset(opset)  # before the checkpoint is read
    cell = check_cell(cell)
    started = time.perf_counter()
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    model, vocab, spec, payload = load_model(checkpoint)
    if quantize is None:  # the run's preset says (edge: int8); "none" turns it off
        quantize = preset_quantization(payload)
    quantize = None if quantize == "none" else quantize
    out = Path(out_dir) if out_dir is not None else default_bundle_dir(checkpoint)
    bundle = export_model(model, vocab, spec, int(payload["max_length"]), out, opset=opset,
                          provenance=checkpoint_provenance(payload), dynamo=dynamo, force=force, cell=cell)
    images = sample_images(spec, image_files(parity_images)) if (check or quantize or fp16) else None
    parity = check_bundle(model, bundle, images) if check else None
    base = Path(os.path.abspath(out))  # "." has no name to add -int8 to
    variants = [write_variant(bundle, precision, base.with_name(f"{base.name}-{precision}"), images, force=force)
                for precision in (["int8"] if quantize else []) + (["fp16"] if fp16 else [])]
    ort = []
    if graph_format == "ort":
        from capkit.export.ort_format import ORT_PRECISIONS, ort_folder, write_ort_bundle

        sources = [bundle, *(load_bundle(v.folder) for v in variants if v.precision in ORT_PRECISIONS)]
        ort = [write_ort_bundle(source, ort_folder(source.folder), images, check=check, force=force,
                                platform=ort_platform) for source in sources]
    return ExportReport(str(out), str(checkpoint), int(bundle.manifest.provenance["opset"]),
                        bundle.manifest.provenance["exporter"], time.perf_counter() - started, parity, variants, ort,
                        bundle.manifest.cell)


__all__ = ["DEFAULT_OPSET", "DecoderStepModule", "EncoderModule", "ExportError", "ExportReport", "checkpoint_provenance",
           "check_cell", "check_opset", "default_bundle_dir", "export_checkpoint", "export_model", "graph_opset",
           "supported_opsets", "with_cell"]
