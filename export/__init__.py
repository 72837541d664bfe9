"""Export: a checkpoint -> a bundle (two ONNX graphs + ``capkit.json``), checked against PyTorch.

    from capkit.export import export_checkpoint
    report = export_checkpoint("runs/latest")          # runs/<name>/bundle, with the parity check
    print(report.render())

Attributes are imported on first use: ``import capkit.export`` (and ``capkit.export.cli``) must
not import torch, so that ``capkit --help`` and the runtime stay cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

DEFAULT_OPSET = 17  # the ONNX opset written unless asked otherwise (here, so that the CLI reads it without torch)
MIN_OPSET = 11  # the oldest opset capkit exports (the newest depends on torch and onnx: onnx_export.supported_opsets)

_EXPORTS = {
    **dict.fromkeys(["DecoderStepModule", "EncoderModule", "ExportError", "ExportReport",
                     "export_checkpoint", "export_model", "supported_opsets"], "onnx_export"),
    **dict.fromkeys(["OrtCheckReport", "ParityReport", "check_bundle", "check_ort_bundle", "sample_images",
                     "synthetic_images"], "checks"),
    **dict.fromkeys(["OrtBundleReport", "convert_bundle", "write_ort_bundle"], "ort_format"),
    **dict.fromkeys(["QuantizationError", "VariantReport", "compare_variant", "convert_fp16", "quantize_int8"],
                    "quantize"),
}

__all__ = sorted([*_EXPORTS, "DEFAULT_OPSET", "MIN_OPSET"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'capkit.export' has no attribute {name!r}")
    value = getattr(import_module(f"capkit.export.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
