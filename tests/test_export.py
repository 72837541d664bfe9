"""`capkit export`: the graph contract, parity with PyTorch, the manifest, int8/fp16 variants, the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from capkit.cli.export import export as export_command  # noqa: E402
from capkit.export import ExportError, check_bundle, export_model  # noqa: E402
from capkit.export.quantize import compare_variant, convert_fp16, quantize_int8  # noqa: E402
from capkit.runtime.bundle import load_bundle, sha256_file  # noqa: E402
from capkit.runtime.manifest import MANIFEST_NAME, BundleError  # noqa: E402

TOLERANCE = 1e-4
# conftest's one_torch_thread: on a shared 2-core machine, torch's spinning threads make training and
# export 10-50x slower under load. Tests that take `kind` run once per decoder kind (conftest's KINDS).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ort_session(path: Path) -> "ort.InferenceSession":
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_graph_contract(export_kit, kind: str, layers: int) -> None:
    bundle = export_kit.bundle(kind, layers)
    # the core's state, then the image embedding every step reads ([1, batch, embed]; docs/bundle.md)
    states = ["h", "c", "image_embedding"] if kind == "lstm" else ["h", "image_embedding"]
    shapes = [[layers, "batch", 32]] * (len(states) - 1) + [[1, "batch", 16]]
    encoder, decoder = onnx.load(str(bundle.encoder_path)), onnx.load(str(bundle.decoder_path))
    assert [i.name for i in encoder.graph.input] == ["image"]
    assert dims(encoder.graph.input[0]) == ["batch", 3, 32, 32]
    assert encoder.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in encoder.graph.output] == states
    assert [dims(o) for o in encoder.graph.output] == shapes
    assert [i.name for i in decoder.graph.input] == ["token", *states]
    assert decoder.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert dims(decoder.graph.input[0]) == ["batch"]
    # logits, the next state, then the greedy choice (next_token int64, next_logprob float64; docs/bundle.md)
    assert [o.name for o in decoder.graph.output] == ["logits", *(s + "_next" for s in states), "next_token",
                                                      "next_logprob"]
    assert dims(decoder.graph.output[0]) == ["batch", len(export_kit.vocab)]
    assert [dims(o) for o in decoder.graph.output[1:-2]] == shapes
    assert [dims(o) for o in decoder.graph.output[-2:]] == [["batch"], ["batch"]]
    assert [o.type.tensor_type.elem_type for o in decoder.graph.output[-2:]] == [onnx.TensorProto.INT64,
                                                                                 onnx.TensorProto.DOUBLE]
    assert {o.version for o in encoder.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert not list(bundle.folder.glob("*.data")), "small models are single-file graphs"
    onnx.checker.check_model(str(bundle.encoder_path), full_check=True)
    onnx.checker.check_model(str(bundle.decoder_path), full_check=True)


def test_encoder_and_step_parity(export_kit, kind: str, layers: int) -> None:
    model, bundle = export_kit.model(kind, layers), export_kit.bundle(kind, layers)
    names = list(model.config.state_names)
    encoder, decoder = ort_session(bundle.encoder_path), ort_session(bundle.decoder_path)
    for batch in (1, 3):
        images = export_kit.images[5:5 + batch]  # (B, 3, 32, 32)
        tokens = np.arange(4, 4 + batch, dtype=np.int64)  # (B,)
        with torch.no_grad():
            state = model.image_step(torch.from_numpy(images))  # each (L, B, H)
            logits, next_state = model.step(torch.from_numpy(tokens), state)  # (B, V)
        onnx_state = encoder.run(names, {"image": images})
        assert max(max_abs(o, t) for o, t in zip(onnx_state, state)) <= TOLERANCE
        out = decoder.run(None, {"token": tokens, **{n: s.numpy() for n, s in zip(names, state)}})
        assert out[0].shape == (batch, len(export_kit.vocab))
        assert max_abs(out[0], logits) <= TOLERANCE
        assert max(max_abs(o, t) for o, t in zip(out[1:], next_state)) <= TOLERANCE


def test_parity_check_passes(export_kit, kind: str, layers: int) -> None:
    """Greedy and seeded sampling (T=0.7): identical token sequences for all 32 images, on varied captions."""
    report = check_bundle(export_kit.model(kind, layers), export_kit.bundle(kind, layers), export_kit.images)
    assert report.passed, report.render()
    assert report.images == 32 and report.greedy_equal == 32 and report.sampled_equal == 32
    assert report.greedy_distinct >= 3, "the captions must differ between images, or equality proves little"
    assert set(report.step_max_abs) == {"batch 1", "batch 32"}
    text = report.render()
    assert "greedy sequences equal 32/32" in text and "PASSED" in text


def test_parity_check_can_fail(export_kit) -> None:
    """The comparison notices a model that is not the exported one."""
    model = export_kit.model("gru")
    bundle = export_kit.bundle("gru")
    changed = type(model)(model.config).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.head.bias.add_(torch.linspace(-2, 2, len(export_kit.vocab)))
    report = check_bundle(changed, bundle, export_kit.images, checker=False)
    assert not report.passed
    assert report.step_max_abs["batch 1"] > TOLERANCE
    assert report.greedy_equal < report.images
    assert "FAILED" in report.render()


@pytest.mark.slow
def test_resnet50_encoder(export_kit) -> None:
    """The seed's encoder (at 32x32 pixels): exported graph parity and identical greedy/sampled captions."""
    report = check_bundle(export_kit.model("lstm", 1, "resnet50"), export_kit.bundle("lstm", 1, "resnet50"),
                          export_kit.images, checker=False)
    assert report.passed, report.render()
    assert report.greedy_distinct >= 2


@pytest.mark.slow
def test_a_grid_that_does_not_divide_the_map_exports_with_parity(export_kit) -> None:
    """Three stages of ResNet-18 leave a 2 x 2 map of the kit's 32-pixel images; pooled to 4 x 4 cells, which
    torch.onnx cannot export as adaptive pooling (GridPool's matrix form instead): the same captions."""
    flags = {"backbone_stages": 3, "image_grid": 4}
    model = export_kit.model("lstm", **flags)
    assert model.encoder.features(torch.zeros(1, 3, export_kit.spec.crop, export_kit.spec.crop)).shape[-1] == 256 * 16
    report = check_bundle(model, export_kit.bundle("lstm", **flags), export_kit.images, checker=False)
    assert report.passed, report.render()
    assert report.greedy_equal == report.images == 32


@pytest.mark.slow  # each trains and exports a model of its own
@pytest.mark.parametrize("flags", [{"freeze_embeddings": True}, {"freeze_encoder": True},
                                   {"freeze_embeddings": True, "freeze_encoder": True}])
def test_frozen_embeddings_and_encoder(export_kit, flags: dict) -> None:
    model, bundle = export_kit.model("lstm", **flags), export_kit.bundle("lstm", **flags)
    assert all(bundle.manifest.model[k] is True for k in flags)
    if flags.get("freeze_embeddings"):
        assert not model.embed.weight.requires_grad
    report = check_bundle(model, bundle, export_kit.images, checker=False)
    assert report.passed, report.render()


def test_reference_evaluator_matches_onnxruntime(export_kit) -> None:
    """onnx's reference implementation computes the same as ONNX Runtime, within 1e-4 (float32 arithmetic
    in a different order: convolutions and the LSTM differ in the last bits)."""
    from onnx.reference import ReferenceEvaluator

    bundle = export_kit.bundle("lstm")
    images, tokens = export_kit.images[:2], np.array([4, 9], dtype=np.int64)
    reference_state = ReferenceEvaluator(str(bundle.encoder_path)).run(None, {"image": images})
    ort_state = ort_session(bundle.encoder_path).run(None, {"image": images})
    assert max(max_abs(r, o) for r, o in zip(reference_state, ort_state)) <= TOLERANCE
    feed = {"token": tokens, **dict(zip(bundle.manifest.decoder.state_inputs, ort_state))}
    reference_step = ReferenceEvaluator(str(bundle.decoder_path)).run(None, feed)
    ort_step = ort_session(bundle.decoder_path).run(None, feed)
    assert [r.shape for r in reference_step] == [(2, len(export_kit.vocab)), (1, 2, 32), (1, 2, 32), (1, 2, 16), (2,),
                                                 (2,)]
    assert max(max_abs(r, o) for r, o in zip(reference_step, ort_step)) <= TOLERANCE


def test_manifest_round_trip_and_tampering(export_kit, tmp_path: Path) -> None:
    source = export_kit.bundle("rnn", 2)
    loaded = load_bundle(source.folder)
    manifest = loaded.manifest
    assert manifest.vocab == export_kit.vocab and manifest.preprocess == export_kit.spec
    assert manifest.max_length == export_kit.max_length and manifest.precision == "fp32"
    assert manifest.encoder.image_input == "image" and manifest.encoder.state_outputs == ("h", "image_embedding")
    assert (manifest.decoder.token_input, manifest.decoder.state_inputs) == ("token", ("h", "image_embedding"))
    assert (manifest.decoder.logits_output, manifest.decoder.state_outputs) == ("logits", ("h_next",
                                                                                          "image_embedding_next"))
    assert manifest.encoder.sha256 == sha256_file(loaded.encoder_path)
    assert manifest.decoder.sha256 == sha256_file(loaded.decoder_path)
    assert manifest.model["decoder"] == "rnn" and manifest.model["layers"] == 2
    assert manifest.provenance["opset"] == 17 and manifest.provenance["exporter"] == "torchscript"
    assert {"capkit", "torch", "onnx"} <= set(manifest.provenance["versions"])
    data = json.loads((source.folder / MANIFEST_NAME).read_text())
    assert data["graphs"]["decoder_step"]["inputs"] == ["token", "h", "image_embedding"]

    copy = tmp_path / "bundle"
    copy.mkdir()
    for path in source.folder.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    assert load_bundle(copy).manifest == manifest
    graph = copy / manifest.decoder.file
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)


def test_export_refuses_a_mismatched_vocabulary(export_kit, tmp_path: Path) -> None:
    from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

    with pytest.raises(ExportError, match="vocabulary"):
        export_model(export_kit.model("lstm"), Vocabulary(SPECIAL_TOKENS + ("a",)), export_kit.spec, 5, tmp_path)


@pytest.mark.slow
def test_torch_export_exporter_at_opset_18(export_kit, tmp_path: Path) -> None:
    """The torch.export-based exporter (the default from opset 18) gives the same contract and parity."""
    model = export_kit.model("lstm")
    bundle = export_model(model, export_kit.vocab, export_kit.spec, export_kit.max_length, tmp_path, opset=18)
    assert bundle.manifest.provenance["exporter"] == "torch.export"
    assert bundle.manifest.provenance["opset"] == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capkit.json", "decoder_step.onnx", "encoder.onnx"]
    report = check_bundle(model, bundle, export_kit.images)
    assert report.passed, report.render()


@pytest.mark.slow
def test_int8_and_fp16_bundles(export_kit, tmp_path: Path) -> None:
    from capkit.runtime.onnx_inference import OnnxInference

    fp32 = export_kit.bundle("lstm")
    int8 = quantize_int8(fp32, tmp_path / "int8", export_kit.images)
    fp16 = convert_fp16(fp32, tmp_path / "fp16")
    for variant, precision in ((int8, "int8"), (fp16, "fp16")):
        loaded = load_bundle(variant.folder)
        assert loaded.manifest.precision == precision
        assert loaded.manifest.provenance["precision"]["from_encoder_sha256"] == fp32.manifest.encoder.sha256
        assert loaded.manifest.vocab == fp32.manifest.vocab
        inference = OnnxInference(loaded, device="cpu")
        logits, _ = inference.step(np.array([1, 1], np.int64), inference.encode(export_kit.images[:2]))
        assert logits.dtype == np.float32 and logits.shape == (2, len(export_kit.vocab))  # float32 io kept
        report = compare_variant(fp32, loaded, export_kit.images)
        assert report.images == 32 and 0 <= report.greedy_equal <= 32
        assert report.size_bytes < report.fp32_size_bytes
        assert precision in report.render()
    ops = {n.op_type for n in onnx.load(str(int8.encoder_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ static encoder
    assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(str(int8.decoder_path)).graph.node}
    assert int8.size_bytes() < 0.4 * fp32.size_bytes()
    assert fp16.size_bytes() < 0.6 * fp32.size_bytes()


# -- export_checkpoint and the command --------------------------------------------------------------------------
@pytest.fixture
def run_folder(export_kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """runs/tiny-run/best.pt with runs/latest -> tiny-run, in a fresh working directory."""
    run = tmp_path / "runs" / "tiny-run"
    export_kit.checkpoint(run / "best.pt", "gru", train_config={}, run_name="tiny-run", data_source="synthetic",
                          epoch=3, step=120, best_val_loss=0.5, history=[])
    (tmp_path / "runs" / "latest").symlink_to("tiny-run")
    monkeypatch.chdir(tmp_path)
    return run


@pytest.mark.slow  # the command end to end: export and its parity check
def test_export_command_default_run(run_folder: Path) -> None:
    result = CliRunner().invoke(export_command, ["--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["parity"]["greedy_equal"] == 32
    assert Path(report["bundle"]).resolve() == (run_folder / "bundle").resolve()  # the real run folder
    assert not Path("runs/latest").resolve().joinpath("bundle").is_symlink()
    assert "parity vs PyTorch" in result.stderr and "PASSED" in result.stderr
    bundle = load_bundle("runs/latest/bundle")  # runtime.bundle.DEFAULT_BUNDLE finds it
    provenance = bundle.manifest.provenance
    assert provenance["run"] == "tiny-run" and provenance["epoch"] == 3 and provenance["step"] == 120
    assert provenance["metrics"]["best_val_loss"] == 0.5
    assert provenance["metrics"]["best_val_perplexity"] == pytest.approx(np.exp(0.5))
    assert provenance["checkpoint"] == "tiny-run/best.pt"  # relative to the run: no path of the training machine
    assert provenance["checkpoint_sha256"] == sha256_file(run_folder / "best.pt")
    assert provenance["data_source"] == "synthetic" and "exported_at" in provenance


@pytest.mark.slow
def test_export_command_options(run_folder: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 30, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out" / "b"
    result = CliRunner().invoke(export_command, ["--checkpoint", str(run_folder / "best.pt"), "--out", str(out), "--no-check",
                                                 "--quantize", "int8", "--fp16", "--images", str(images), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["parity"] is None and report["passed"]
    assert [v["precision"] for v in report["variants"]] == ["int8", "fp16"]
    assert all(v["images"] == 32 and v["size_ratio"] < 1 for v in report["variants"])
    assert load_bundle(out).manifest.precision == "fp32"
    assert load_bundle(tmp_path / "out" / "b-int8").manifest.precision == "int8"
    assert load_bundle(tmp_path / "out" / "b-fp16").manifest.precision == "fp16"
    assert "skipped" in result.stderr


@pytest.mark.slow  # the command end to end: export and its parity check
def test_export_command_fails_on_parity(run_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import capkit.export.checks as checks

    real = checks.check_bundle

    def broken(model, bundle, images=None, **kwargs):
        with torch.no_grad():
            model.head.bias.add_(torch.linspace(-2, 2, model.head.bias.numel()))
        return real(model, bundle, images, **kwargs)

    monkeypatch.setattr(checks, "check_bundle", broken)
    result = CliRunner().invoke(export_command, ["--checkpoint", "runs/latest"])
    assert result.exit_code == 1
    assert "FAILED" in result.stderr
    assert Path(result.stdout.strip()).resolve() == (run_folder / "bundle").resolve()  # data on stdout: the bundle


def test_export_command_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_command, [])
    assert result.exit_code == 1
    assert "no such checkpoint" in result.stderr and "Traceback" not in result.output


def test_export_cli_import_is_cheap() -> None:
    code = "import sys, capkit.export, capkit.cli.export; print(sorted({'torch', 'onnx'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
