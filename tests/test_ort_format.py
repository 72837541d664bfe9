"""ORT-format bundles (`capkit export --format ort`, capkit/export/ort_format.py): written through the
staging, loaded ORT-format-only, the same captions as the ONNX bundle, one operator config for both
graphs, the manifest's ``graph_format`` checked, tampering caught."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import onnxruntime as ort  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from capkit.cli import main  # noqa: E402
from capkit.export.checks import check_ort_bundle, synthetic_images  # noqa: E402
from capkit.export.ort_format import (ORT_DECODER_FILE, ORT_ENCODER_FILE, OrtFormatError, config_operators,  # noqa: E402
                                      convert_bundle, ort_folder, write_ort_bundle)
from capkit.runtime import Captioner  # noqa: E402
from capkit.runtime.bundle import OPERATOR_CONFIG_FILE, load_bundle, sha256_file  # noqa: E402
from capkit.runtime.manifest import BundleError, Manifest, check_manifest  # noqa: E402
from capkit.runtime.onnx_inference import OnnxInference  # noqa: E402
from capkit.runtime.providers import LOAD_MODEL_FORMAT  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ORT_ONLY = "ORT"


def _ort_only(options: ort.SessionOptions) -> bool:
    try:
        return options.get_session_config_entry(LOAD_MODEL_FORMAT) == ORT_ONLY
    except RuntimeError:  # not set
        return False


@pytest.fixture(scope="module")
def ort_kit(export_kit, tmp_path_factory):
    """export_kit's LSTM bundle, its ORT-format bundle (written and checked by write_ort_bundle) and the report."""
    onnx_bundle = export_kit.bundle("lstm")
    report = write_ort_bundle(onnx_bundle, tmp_path_factory.mktemp("ort") / "lstm-ort", export_kit.images)
    return onnx_bundle, load_bundle(report.folder), report


@pytest.mark.slow
def test_ort_bundle_is_written_with_ort_graphs_and_its_sha256(ort_kit):
    onnx_bundle, bundle, report = ort_kit
    folder = bundle.folder
    assert sorted(os.listdir(folder)) == sorted(["capkit.json", ORT_ENCODER_FILE, ORT_DECODER_FILE, OPERATOR_CONFIG_FILE])
    data = json.loads((folder / "capkit.json").read_text())
    assert data["graph_format"] == "ort" and bundle.manifest.graph_format == "ort"
    assert onnx_bundle.manifest.graph_format == "onnx"
    for graph, name in (("encoder", ORT_ENCODER_FILE), ("decoder_step", ORT_DECODER_FILE)):
        assert data["graphs"][graph]["file"] == name
        assert data["graphs"][graph]["sha256"] == sha256_file(folder / name)
        assert (folder / name).read_bytes()[4:8] == b"ORTM"  # the ORT format's flatbuffers file identifier
    # everything else is the ONNX bundle's manifest
    assert bundle.manifest.vocab == onnx_bundle.manifest.vocab and bundle.manifest.preprocess == onnx_bundle.manifest.preprocess
    assert dataclasses.replace(bundle.manifest.decoder, file="", sha256="") == \
        dataclasses.replace(onnx_bundle.manifest.decoder, file="", sha256="")
    assert data["provenance"]["ort_format"]["from_encoder_sha256"] == onnx_bundle.manifest.encoder.sha256
    assert data["provenance"]["ort_format"]["platform"] == "x86"  # the default CPU family converted for
    # the report: sizes as on disk, and the check after conversion passed on 32 images
    assert report.size_bytes == sum((folder / n).stat().st_size for n in (ORT_ENCODER_FILE, ORT_DECODER_FILE))
    assert report.size_bytes == bundle.size_bytes()
    assert report.onnx_size_bytes == onnx_bundle.size_bytes()
    assert report.config_bytes == (folder / OPERATOR_CONFIG_FILE).stat().st_size
    assert report.check is not None and report.check.passed and report.passed
    assert report.check.images == 32 and report.check.greedy_equal == report.check.sampled_equal == 32
    assert report.check.greedy_distinct > 1
    assert report.to_dict()["check"]["passed"] is True
    assert "ORT-format bundle" in report.render() and "MB" in report.render()


@pytest.mark.slow
def test_sessions_load_the_graphs_ort_format_only(ort_kit, tmp_path):
    onnx_bundle, bundle, _ = ort_kit
    inference = OnnxInference(bundle, device="cpu")
    assert inference.graph_format == "ort"
    assert all(_ort_only(options) for options in inference._options.values())
    assert not any(_ort_only(options) for options in OnnxInference(onnx_bundle, device="cpu")._options.values())
    # the option is real: an ONNX file is refused by a session created with it, the .ort file loads
    options = ort.SessionOptions()
    options.add_session_config_entry(LOAD_MODEL_FORMAT, ORT_ONLY)
    ort.InferenceSession(str(bundle.encoder_path), options, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):
        ort.InferenceSession(str(onnx_bundle.encoder_path), options, providers=["CPUExecutionProvider"])
    # a manifest that says "ort" over ONNX graphs is refused in one line at load
    fake = tmp_path / "fake"
    shutil.copytree(onnx_bundle.folder, fake)
    dataclasses.replace(onnx_bundle.manifest, graph_format="ort").write(fake)
    with pytest.raises(BundleError, match="ONNX Runtime cannot load it") as error:
        Captioner(fake, device="cpu")
    assert "\n" not in str(error.value)
    # the optimised-model cache is skipped for ORT-format graphs (already optimised)
    cache = tmp_path / "cache"
    Captioner(bundle, device="cpu", optimized_model_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())
    Captioner(onnx_bundle, device="cpu", optimized_model_dir=cache)
    assert any(cache.iterdir())  # an ONNX bundle still uses it


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"temperature": 0.7, "seed": 0}, {"beam": 3}], ids=["greedy", "sampled", "beam3"])
def test_captioner_gives_the_onnx_bundles_tokens(ort_kit, options):
    onnx_bundle, bundle, _ = ort_kit
    images = synthetic_images(32, seed=3)  # uint8 arrays, through the runtime's preprocessing
    expected = Captioner(onnx_bundle, device="cpu").caption_batch(images, **options)
    got = Captioner(bundle, device="cpu").caption_batch(images, **options)
    assert all(c.ok for c in got)
    assert [c.tokens for c in got] == [c.tokens for c in expected]
    assert len({c.tokens for c in expected}) > 1  # the comparison is not of one caption 32 times
    np.testing.assert_allclose([c.logprob for c in got], [c.logprob for c in expected], atol=1e-3)


@pytest.mark.slow
def test_operator_config_covers_both_graphs(ort_kit):
    _, bundle, report = ort_kit
    text = (bundle.folder / OPERATOR_CONFIG_FILE).read_text()
    operators = config_operators(text)
    names = {op.rsplit(";", 1)[1] for op in operators}
    assert "LSTM" in names  # the decoder step (and the encoder's step 0)
    assert {"Conv", "FusedConv", "MaxPool"} & names  # the ResNet encoder
    assert {"ArgMax", "Gather"} <= names  # the decoder step's greedy choice and embedding
    assert report.operators == len(operators)
    # one config, named for both graphs, by file name only: no path of the machine that wrote it
    header = [line for line in text.splitlines() if line.startswith("# - ")]
    assert sorted(header) == sorted([f"# - {ORT_ENCODER_FILE}", f"# - {ORT_DECODER_FILE}"])
    assert "/" not in "".join(header)
    # type reduction is on: operators carry their types
    assert '"inputs"' in text


def test_graph_format_field_is_checked(export_kit):
    data = export_kit.bundle("lstm").manifest.to_dict()
    assert data["graph_format"] == "onnx"
    assert check_manifest(data).graph_format == "onnx"
    assert check_manifest({**data, "graph_format": "ort"}).graph_format == "ort"
    old = {k: v for k, v in data.items() if k != "graph_format"}  # bundles written before the field
    assert check_manifest(old).graph_format == "onnx"
    for value in ("tflite", "ORT", 1, None, ["ort"]):
        with pytest.raises(BundleError) as error:
            Manifest.from_dict({**data, "graph_format": value})
        message = str(error.value)
        assert message.startswith("graph_format: must be one of onnx, ort, got ") and "\n" not in message


def test_graph_format_refused_at_load_names_the_folder(export_kit, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(export_kit.bundle("lstm").folder, folder)
    data = json.loads((folder / "capkit.json").read_text())
    (folder / "capkit.json").write_text(json.dumps({**data, "graph_format": "tflite"}))
    with pytest.raises(BundleError, match=r"graph_format: must be one of onnx, ort, got 'tflite'") as error:
        load_bundle(folder)
    assert str(error.value).startswith(f"{folder}: ")
    result = CliRunner().invoke(main, ["caption", "--model", str(folder), "--device", "cpu", "x.png"])
    assert result.exit_code == 1 and "graph_format" in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_tampered_ort_graph_fails_the_sha256_check(ort_kit, tmp_path):
    _, bundle, _ = ort_kit
    folder = tmp_path / "tampered"
    shutil.copytree(bundle.folder, folder)
    path = folder / ORT_DECODER_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{ORT_DECODER_FILE} has sha256 .* the manifest says"):
        load_bundle(folder)
    with pytest.raises(BundleError, match="sha256"):
        Captioner(folder, device="cpu")
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(synthetic_images(1)[0]).save(image)
    result = CliRunner().invoke(main, ["caption", "--model", str(folder), "--device", "cpu", str(image)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "sha256" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_capkit_caption_loads_an_ort_bundle(ort_kit, tmp_path):
    onnx_bundle, bundle, _ = ort_kit
    from PIL import Image

    paths = []
    for i, array in enumerate(synthetic_images(6, seed=4)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(array).save(paths[-1])
    outputs = [CliRunner().invoke(main, ["caption", "--model", str(b.folder), "--device", "cpu", "--json", *paths])
               for b in (onnx_bundle, bundle)]
    assert [r.exit_code for r in outputs] == [0, 0]
    lines = [[json.loads(line) for line in r.stdout.splitlines()] for r in outputs]
    assert len(lines[1]) == 6 and [c["tokens"] for c in lines[1]] == [c["tokens"] for c in lines[0]]


@pytest.mark.slow
def test_the_check_fails_on_different_captions(export_kit, ort_kit, tmp_path):
    """check_ort_bundle really compares: the ORT-format bundle of another model fails it; a bundle
    that is not ORT-format is a problem, not a pass."""
    onnx_bundle, bundle, _ = ort_kit
    other = convert_bundle(export_kit.bundle("gru"), tmp_path / "gru-ort")
    report = check_ort_bundle(onnx_bundle, other, export_kit.images)
    assert not report.passed and report.greedy_equal < report.images
    assert "FAILED" in report.render()
    not_ort = check_ort_bundle(onnx_bundle, onnx_bundle, export_kit.images)
    assert not not_ort.passed and "graph_format" in not_ort.problems[0]
    with pytest.raises(OrtFormatError, match="in ort format already"):
        convert_bundle(bundle, tmp_path / "again")
    with pytest.raises(OrtFormatError, match="another folder"):
        convert_bundle(onnx_bundle, onnx_bundle.folder)


@pytest.mark.slow
def test_reexport_replaces_the_ort_bundle_and_keeps_foreign_folders(export_kit, ort_kit, tmp_path):
    """The ORT-format folder is written through the staging: a second export replaces it whole (the
    config is the bundle's own file), a folder that is not a bundle is refused."""
    onnx_bundle, _, _ = ort_kit
    out = tmp_path / "b-ort"
    convert_bundle(onnx_bundle, out)
    first = sorted(os.listdir(out))
    report = write_ort_bundle(onnx_bundle, out, check=False)  # --no-check: written, sized, not compared
    assert sorted(os.listdir(out)) == first
    assert report.check is None and report.passed and "check skipped" in report.render()
    assert report.size_bytes == load_bundle(out).size_bytes()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".capkit-")]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="not a capkit bundle"):
        convert_bundle(onnx_bundle, foreign)
    assert os.listdir(foreign) == ["notes.txt"]
    assert ort_folder(tmp_path / "b") == tmp_path / "b-ort"


@pytest.mark.slow
def test_cli_export_format_ort_writes_fp32_and_int8_with_sizes(checkpoint, tmp_path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--format", "ort",
                                       "--quantize", "int8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert [o["precision"] for o in report["ort"]] == ["fp32", "int8"]
    for entry, folder in zip(report["ort"], (tmp_path / "bundle-ort", tmp_path / "bundle-int8-ort")):
        assert Path(entry["folder"]) == folder
        bundle = load_bundle(folder)
        assert bundle.manifest.graph_format == "ort"
        assert entry["size_bytes"] == bundle.size_bytes() > 0
        assert entry["check"]["passed"] and entry["check"]["images"] == 32
        assert (folder / OPERATOR_CONFIG_FILE).is_file() and entry["operators"] > 5
    assert load_bundle(tmp_path / "bundle-int8-ort").manifest.precision == "int8"
    assert report["ort"][1]["size_bytes"] < 0.5 * report["ort"][0]["size_bytes"]
    # the text report (stderr) gives the sizes
    assert "fp32 ORT-format bundle" in result.stderr and "int8 ORT-format bundle" in result.stderr
    assert "MB" in result.stderr and "PASSED" in result.stderr
    # the default stays ONNX only
    plain = tmp_path / "plain"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(plain), "--no-check"])
    assert result.exit_code == 0 and not (tmp_path / "plain-ort").exists()


@pytest.mark.slow
def test_cli_export_ort_platform_arm_is_recorded_and_converts_int8_otherwise(checkpoint, tmp_path):
    """--ort-platform arm: the manifests say so, the int8 graphs are converted differently from x86's (int8 kept on
    both sides of each product), and they still pass the check against the ONNX bundle on this machine."""
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--format", "ort",
                                       "--quantize", "int8", "--ort-platform", "arm", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [o["check"]["passed"] for o in report["ort"]] == [True, True]
    arm = load_bundle(tmp_path / "bundle-int8-ort")
    assert arm.manifest.provenance["ort_format"]["platform"] == "arm"
    assert load_bundle(tmp_path / "bundle-ort").manifest.provenance["ort_format"]["platform"] == "arm"
    x86 = convert_bundle(load_bundle(tmp_path / "bundle-int8"), tmp_path / "x86-int8-ort")
    assert x86.manifest.provenance["ort_format"]["platform"] == "x86"
    assert x86.manifest.encoder.sha256 != arm.manifest.encoder.sha256
    with pytest.raises(OrtFormatError, match="unknown ORT-format platform 'riscv'; one of x86, arm"):
        convert_bundle(load_bundle(tmp_path / "bundle-int8"), tmp_path / "riscv", platform="riscv")
    refused = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "r"),
                                        "--format", "ort", "--ort-platform", "riscv"])
    assert refused.exit_code == 2 and "'riscv' is not one of 'x86', 'arm'" in refused.output


@pytest.mark.slow
def test_cli_export_exits_1_when_the_ort_check_fails(export_kit, checkpoint, tmp_path, monkeypatch):
    """A conversion that changes the captions (here: the ORT-format graphs of another model) fails
    the check, and `capkit export` exits 1 as for a failed parity check."""
    import capkit.export.ort_format as ort_format

    real = ort_format.convert_bundle
    monkeypatch.setattr(ort_format, "convert_bundle",
                        lambda bundle, out, force=False, platform="x86": real(export_kit.bundle("gru"), out,
                                                                               force=force, platform=platform))
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "b"),
                                       "--format", "ort"])
    assert result.exit_code == 1
    assert "ORT format vs ONNX" in result.stderr and "FAILED" in result.stderr
