"""ORT-format bundles: the two graphs in ONNX Runtime's own format, for ONNX Runtime Mobile and minimal builds.

A minimal ONNX Runtime build (``./build.sh --minimal_build``, what ONNX Runtime Mobile ships) reads
ORT-format models only: flatbuffers files, optimised once when written, that it loads without the
ONNX protobuf parser or the graph optimisers. A reduced-operator build
(``--include_ops_by_config``) also compiles only the kernels, and with
``--enable_reduced_operator_type_support`` only the types, that a config file lists.

:func:`write_ort_bundle` converts an ONNX bundle (fp32 or int8) with ONNX Runtime's own converter,
``onnxruntime.tools.convert_onnx_models_to_ort``, into a sibling folder (``<bundle>-ort``):

    encoder.ort                          image -> recurrent state
    decoder_step.ort                     (token, state) -> (logits, next state)
    required_operators_and_types.config  the operators and types of BOTH graphs, for a reduced build
    capkit.json                          the same manifest with graph_format "ort" and the .ort sha256s

Conversion settings: the "Fixed" optimisation style at level "all" with the converter's default
target platform, which leaves out the x86-only NCHWc layout transformer, so the files run on ARM
and x86 alike; type reduction on (the config lists the types each operator needs). The folder is
written as every export writes its folder (:mod:`capkit.export.staging`: staged, checked, swapped in
whole; ``force`` likewise), and the config's header names the graphs by file name only (the
converter writes the staging folder's absolute paths there). The check
(:func:`capkit.export.checks.check_ort_bundle`) compares greedy and seeded-sampling captions with
the ONNX bundle's, in sessions that load the graphs ORT-format-only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from capkit.export.staging import staged_bundle
from capkit.runtime.bundle import (DECODER_FILE, ENCODER_FILE, OPERATOR_CONFIG_FILE, ORT_DECODER_FILE, ORT_ENCODER_FILE,
                                   Bundle, _external_data_files,
                                   load_bundle, sha256_file)
from capkit.runtime.errors import CapkitError, first_line

if TYPE_CHECKING:
    from capkit.export.checks import OrtCheckReport

ORT_SUFFIX = "-ort"  # <bundle> -> <bundle>-ort, <bundle>-int8 -> <bundle>-int8-ort
ORT_PRECISIONS = ("fp32", "int8")  # the variants converted by `capkit export --format ort`
CONVERSION = {"tool": "onnxruntime.tools.convert_onnx_models_to_ort", "optimization_style": "Fixed",
              "optimization_level": "all", "enable_type_reduction": True}
# The CPU family a conversion is for (`capkit export --ort-platform`): the converter's fusions of int8 QDQ nodes differ.
# x86: its default target (no NCHWc layout, so the files also load on ARM; int8 QDQ converted with
# session.qdqisint8allowed 0, as for x86's uint8 x int8 kernels); arm: its "arm" target (qdqisint8allowed 1: int8
# weights and activations kept for ARM's int8 kernels). Either runs anywhere; on the other family, slower.
ORT_PLATFORMS = {"x86": None, "arm": "arm"}  # capkit's name -> the converter's target_platform


class OrtFormatError(CapkitError):
    """A bundle that could not be written in ORT format; one line naming the bundle and the step."""


@dataclass
class OrtBundleReport:
    """One ORT-format bundle: what it weighs against its ONNX source, its operator config, its check."""
    precision: str
    folder: str
    size_bytes: int  # both .ort graphs: what an app ships (the manifest aside)
    onnx_size_bytes: int  # both graphs of the ONNX bundle it was converted from
    config_file: str
    config_bytes: int
    operators: int  # operator entries in the config (both graphs)
    check: Optional["OrtCheckReport"] = None  # None with --no-check

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / max(self.onnx_size_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["check"] = self.check.to_dict() if self.check is not None else None
        return {**data, "size_ratio": round(self.size_ratio, 4), "passed": self.passed}

    def render(self) -> str:
        line = (f"{self.precision} ORT-format bundle {self.folder}: {self.size_bytes / 1e6:.1f} MB "
                f"({self.size_ratio:.0%} of the ONNX graphs' {self.onnx_size_bytes / 1e6:.1f} MB); "
                f"{self.config_file}: {self.operators} operators of both graphs, {self.config_bytes} bytes")
        check = self.check.render() if self.check is not None else "  ORT-format check skipped (--no-check)"
        return f"{line}\n{check}"


def ort_folder(onnx_folder: str | os.PathLike) -> Path:
    """The sibling folder of an ONNX bundle's ORT-format bundle: ``<folder>-ort`` (absolute)."""
    base = Path(os.path.abspath(onnx_folder))  # "." has no name to add -ort to
    return base.with_name(f"{base.name}{ORT_SUFFIX}")


CONVERTER_LOGGERS = ("ort_format_model.utils", "ort_format_model")  # the converter's own, at DEBUG level


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converter prints progress on stdout (which carries the CLI's data), logs through its own
    loggers and, when imported, adds a handler to the root logger (``logging.basicConfig``); keep
    all of it off the terminal and leave the root logger's handlers as they were."""
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(name) for name in CONVERTER_LOGGERS)]
    levels, handlers = [logger.level for logger in loggers], list(root.handlers)
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        root.handlers[:] = handlers


def _converter() -> tuple[Any, Any]:
    """``convert_onnx_models_to_ort`` and ``OptimizationStyle``, imported quietly (see :func:`_quiet`)."""
    with _quiet():
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    return convert_onnx_models_to_ort, OptimizationStyle


def config_operators(text: str) -> list[str]:
    """``domain;opset;Op`` of every operator a ``required_operators_and_types.config`` lists, e.g.
    ``ai.onnx;14;LSTM`` (type lists left out)."""
    operators = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, ops = (line.split(";", 2) + ["", ""])[:3]
        depth, name = 0, ""
        for char in ops + ",":  # ops: Op{"inputs": {...}},Op2,... ; commas inside the braces are not separators
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            elif char == "," and depth == 0:
                if name.strip():
                    operators.append(f"{domain};{opset};{name.strip()}")
                name = ""
            elif depth == 0:
                name += char
    return operators


def _portable_config(path: Path) -> None:
    """The converter's config names the models it read by their absolute paths (here, the staging
    folder's); keep their file names only, so the bundle carries no path of this machine."""
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [f"# - {Path(line[4:].strip()).name}" if line.startswith("# - ") else line for line in lines]
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")


def convert_bundle(bundle: Bundle, out_dir: str | os.PathLike, force: bool = False, platform: str = "x86") -> Bundle:
    """The ORT-format bundle of ``bundle`` (an ONNX bundle, fp32 or int8) in ``out_dir``: both graphs
    converted for ``platform`` (one of ORT_PLATFORMS), one operator config covering both, the manifest with
    ``graph_format`` "ort" and the platform in ``provenance.ort_format.platform``. Raises OrtFormatError (one
    line) when the source cannot be converted."""
    from onnxruntime import __version__ as ort_version

    if platform not in ORT_PLATFORMS:
        raise OrtFormatError(f"unknown ORT-format platform {platform!r}; one of {', '.join(ORT_PLATFORMS)}")
    manifest = bundle.manifest
    out = Path(out_dir)
    if manifest.graph_format != "onnx":
        raise OrtFormatError(f"{bundle.folder}: its graphs are in {manifest.graph_format} format already; "
                             "convert an ONNX bundle")
    if Path(os.path.abspath(out)).resolve() == bundle.folder.resolve():
        raise OrtFormatError(f"{out}: write the ORT-format bundle to another folder than its source")
    for path in (bundle.encoder_path, bundle.decoder_path):
        if _external_data_files(path):
            raise OrtFormatError(f"{bundle.folder}: {path.name} keeps its weights in an external-data file; the ORT "
                                 "format holds graphs under 2 GB in one file only")
    convert_onnx_models_to_ort, OptimizationStyle = _converter()
    with staged_bundle(out, force) as staging, tempfile.TemporaryDirectory(dir=staging, prefix=".ort-") as tmp, _quiet():
        source, converted = Path(tmp, "onnx"), Path(tmp, "ort")
        source.mkdir()
        shutil.copyfile(bundle.encoder_path, source / ENCODER_FILE)  # standard names: encoder.ort, decoder_step.ort
        shutil.copyfile(bundle.decoder_path, source / DECODER_FILE)
        try:
            convert_onnx_models_to_ort(source, converted, optimization_styles=[OptimizationStyle.Fixed],
                                       enable_type_reduction=True, target_platform=ORT_PLATFORMS[platform])
        except Exception as e:  # an operator this ONNX Runtime cannot load or save, a full disk, ...
            raise OrtFormatError(f"{bundle.folder}: ORT-format conversion failed ({type(e).__name__}: "
                                 f"{first_line(e)})") from e
        made = {name: converted / name for name in (ORT_ENCODER_FILE, ORT_DECODER_FILE, OPERATOR_CONFIG_FILE)}
        missing = [name for name, path in made.items() if not path.is_file()]
        if missing:
            raise OrtFormatError(f"{bundle.folder}: ORT-format conversion wrote no {', '.join(missing)}")
        _portable_config(made[OPERATOR_CONFIG_FILE])
        for name, path in made.items():
            os.replace(path, staging / name)
        provenance = {**manifest.provenance, "ort_format": {
            **CONVERSION, "platform": platform, "onnxruntime": ort_version, "operator_config": OPERATOR_CONFIG_FILE,
            "from_bundle": Path(os.path.abspath(bundle.folder)).name,
            "from_encoder_sha256": manifest.encoder.sha256, "from_decoder_sha256": manifest.decoder.sha256}}
        dataclasses.replace(
            manifest, graph_format="ort", provenance=provenance,
            encoder=dataclasses.replace(manifest.encoder, file=ORT_ENCODER_FILE,
                                        sha256=sha256_file(staging / ORT_ENCODER_FILE)),
            decoder=dataclasses.replace(manifest.decoder, file=ORT_DECODER_FILE,
                                        sha256=sha256_file(staging / ORT_DECODER_FILE)),
        ).write(staging)
        load_bundle(staging)  # whole and consistent before it replaces anything
    return load_bundle(out)


def write_ort_bundle(bundle: Bundle, out_dir: str | os.PathLike, images: Optional[np.ndarray] = None, *,
                     check: bool = True, force: bool = False, platform: str = "x86") -> OrtBundleReport:
    """:func:`convert_bundle` (for ``platform``), then (``check``) the ORT-format bundle against ``bundle`` on
    ``images`` (float32 (N, 3, H, W); None: 32 synthetic): :func:`capkit.export.checks.check_ort_bundle`."""
    converted = convert_bundle(bundle, out_dir, force=force, platform=platform)
    report = None
    if check:
        from capkit.export.checks import check_ort_bundle

        report = check_ort_bundle(bundle, converted, images)
    config = converted.folder / OPERATOR_CONFIG_FILE
    return OrtBundleReport(converted.manifest.precision, str(converted.folder), converted.size_bytes(),
                           bundle.size_bytes(), OPERATOR_CONFIG_FILE, config.stat().st_size,
                           len(config_operators(config.read_text(encoding="utf-8"))), report)


__all__ = ["ORT_DECODER_FILE", "ORT_ENCODER_FILE", "ORT_PRECISIONS", "ORT_SUFFIX", "OrtBundleReport", "OrtFormatError",
           "config_operators", "convert_bundle", "ort_folder", "write_ort_bundle"]
