"""Smaller bundles from an fp32 bundle: int8 (ONNX Runtime quantization) and fp16.

- int8: the decoder step is quantized dynamically (weights int8, activations quantized on the fly:
  ``quantize_dynamic``); the encoder statically (``quantize_static``, QDQ format, per-channel int8
  weights, uint8 activations whose ranges come from calibration images), after
  ``quant_pre_process`` (shape inference and graph clean-up).
- fp16: ``onnxruntime.transformers.float16.convert_float_to_float16`` (it ships with ONNX Runtime),
  with ``keep_io_types`` so the graphs still take and give float32: the runtime feeds them unchanged.

Neither is exact. Each variant's manifest says its ``precision``, and :class:`VariantReport` gives
its size against fp32 and how many greedy captions equal the fp32 bundle's; accuracy is for
``capkit eval --model`` to judge.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from capkit.export.staging import staged_bundle
from capkit.runtime.bundle import DECODER_FILE, ENCODER_FILE, Bundle, load_bundle, sha256_file
from capkit.runtime.decoding import DecodingOptions, decode
from capkit.runtime.errors import CapkitError, first_line

VARIANT_PRECISIONS = ("int8", "fp16")  # the reduced-precision bundles write_variant makes beside an fp32 one
CALIBRATION_BATCH = 8


class QuantizationError(CapkitError):
    """A bundle that could not be quantized or converted; one line naming the step."""


@dataclass
class VariantReport:
    precision: str
    folder: str
    size_bytes: int  # both graphs (and any external data)
    fp32_size_bytes: int
    images: int
    greedy_equal: int  # images whose greedy caption equals the fp32 bundle's

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / max(self.fp32_size_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "size_ratio": round(self.size_ratio, 4)}

    def render(self) -> str:
        return (f"{self.precision} bundle {self.folder}: {self.size_bytes / 1e6:.1f} MB "
                f"({self.size_ratio:.0%} of fp32's {self.fp32_size_bytes / 1e6:.1f} MB); greedy captions equal to "
                f"fp32 on {self.greedy_equal}/{self.images} images")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools log hints through the root logger; keep them off the terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _write_variant(source: Bundle, out_dir: Path, precision: str, graphs: dict[str, Path], details: dict[str, Any]) -> Bundle:
    """Moves the converted graphs into ``out_dir`` (the staging folder) and writes the manifest
    (precision, new sha256) last; the source bundle is recorded by its folder's name, not its path."""
    for name, path in graphs.items():
        os.replace(path, out_dir / name)
    manifest = source.manifest
    provenance = {**manifest.provenance, "precision": {"precision": precision,
                                                       "from_bundle": Path(os.path.abspath(source.folder)).name,
                                                       "from_encoder_sha256": manifest.encoder.sha256,
                                                       "from_decoder_sha256": manifest.decoder.sha256, **details}}
    dataclasses.replace(
        manifest, precision=precision, provenance=provenance,
        encoder=dataclasses.replace(manifest.encoder, file=ENCODER_FILE, sha256=sha256_file(out_dir / ENCODER_FILE)),
        decoder=dataclasses.replace(manifest.decoder, file=DECODER_FILE, sha256=sha256_file(out_dir / DECODER_FILE)),
    ).write(out_dir)
    return load_bundle(out_dir)


def _check_source(bundle: Bundle, out_dir: Path) -> None:
    if bundle.manifest.precision != "fp32":
        raise QuantizationError(f"{bundle.folder}: is {bundle.manifest.precision}; convert an fp32 bundle")
    if out_dir.resolve() == bundle.folder.resolve():
        raise QuantizationError(f"{out_dir}: write the {bundle.manifest.precision} variant to another folder than its source")


def quantize_int8(bundle: Bundle, out_dir: str | os.PathLike, calibration: np.ndarray,
                  batch_size: int = CALIBRATION_BATCH, force: bool = False) -> Bundle:
    """int8 bundle: static QDQ per-channel encoder (calibrated on ``calibration``, float32 (N, 3, H, W)
    preprocessed images), dynamic int8 decoder step. ``out_dir`` is written as the fp32 export
    writes its folder (:mod:`capkit.export.staging`: staged, swapped in whole; ``force`` likewise)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_dir = Path(out_dir)
    _check_source(bundle, out_dir)
    image_name = bundle.manifest.encoder.image_input
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)  # (N, 3, H, W)

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{image_name: calibration[i:i + batch_size]} for i in range(0, len(calibration), batch_size)])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self._batches, None)

    with staged_bundle(out_dir, force) as staging, tempfile.TemporaryDirectory(dir=staging, prefix=".int8-") as tmp, \
            _quiet():
        prepared, encoder, decoder = Path(tmp, "prepared.onnx"), Path(tmp, ENCODER_FILE), Path(tmp, DECODER_FILE)
        try:
            quant_pre_process(str(bundle.encoder_path), str(prepared))
        except Exception:  # symbolic shape inference can fail on unusual graphs; the plain graph still quantizes
            prepared = bundle.encoder_path
        try:
            quantize_static(str(prepared), str(encoder), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            quantize_dynamic(str(bundle.decoder_path), str(decoder), weight_type=QuantType.QInt8)
        except Exception as e:
            raise QuantizationError(f"{bundle.folder}: int8 quantization failed ({type(e).__name__}: "
                                    f"{first_line(e)})") from e
        _write_variant(bundle, staging, "int8", {ENCODER_FILE: encoder, DECODER_FILE: decoder}, {
            "encoder": "static QDQ, per-channel int8 weights, uint8 activations (MinMax calibration)",
            "decoder": "dynamic int8 weights", "calibration_images": int(len(calibration))})
    return load_bundle(out_dir)


def convert_fp16(bundle: Bundle, out_dir: str | os.PathLike, force: bool = False) -> Bundle:
    """fp16 bundle: weights and arithmetic in float16, inputs and outputs still float32; ``out_dir``
    written as :func:`quantize_int8` writes its own."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out_dir = Path(out_dir)
    _check_source(bundle, out_dir)
    with staged_bundle(out_dir, force) as staging, tempfile.TemporaryDirectory(dir=staging, prefix=".fp16-") as tmp, \
            _quiet():
        graphs = {}
        for name, path in ((ENCODER_FILE, bundle.encoder_path), (DECODER_FILE, bundle.decoder_path)):
            try:
                model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
            except Exception as e:
                raise QuantizationError(f"{path}: fp16 conversion failed ({type(e).__name__}: "
                                        f"{first_line(e)})") from e
            graphs[name] = Path(tmp, name)
            onnx.save_model(model, str(graphs[name]))
        _write_variant(bundle, staging, "fp16", graphs, {"method": "onnxruntime.transformers.float16, keep_io_types"})
    return load_bundle(out_dir)


def compare_variant(reference: Bundle, variant: Bundle, images: np.ndarray) -> VariantReport:
    """Size against the fp32 bundle, and greedy captions (CPU) equal to its on ``images``."""
    from capkit.runtime.onnx_inference import OnnxInference

    vocab = reference.manifest.vocab
    options = DecodingOptions(max_length=reference.manifest.max_length)
    captions = [decode(OnnxInference(b, device="cpu"), images, options, vocab)
                for b in (reference, variant)]
    equal = sum(a.tokens == b.tokens for a, b in zip(*captions))
    return VariantReport(variant.manifest.precision, str(variant.folder), variant.size_bytes(), reference.size_bytes(),
                         len(images), equal)


def write_variant(bundle: Bundle, precision: str, out_dir: str | os.PathLike, images: np.ndarray,
                  force: bool = False) -> VariantReport:
    """``precision`` (int8 | fp16) bundle of ``bundle`` in ``out_dir``, compared with it on ``images``."""
    if precision == "int8":
        variant = quantize_int8(bundle, out_dir, images, force=force)
    elif precision == "fp16":
        variant = convert_fp16(bundle, out_dir, force=force)
    else:
        raise QuantizationError(f"unknown precision {precision!r}; one of {', '.join(VARIANT_PRECISIONS)}")
    return compare_variant(bundle, variant, images)


__all__ = ["QuantizationError", "VARIANT_PRECISIONS", "VariantReport", "compare_variant", "convert_fp16",
           "quantize_int8", "write_variant"]
