"""The recurrent cell as plain matrix operations (``capkit export --cell matmul``, models/matmul_core.py):
MatMulCore computes what nn.LSTM / nn.GRU / nn.RNN compute, from their own parameters; a matmul bundle
has no recurrent operator, passes export's parity check and captions as the operator bundle does; the
manifest records the form; bad values are one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import torch.nn as nn  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from capkit.cli.export import export as export_command  # noqa: E402
from capkit.export import ExportError, check_bundle, export_model  # noqa: E402
from capkit.export.onnx_export import export_checkpoint  # noqa: E402
from capkit.models.config import ModelConfigError  # noqa: E402
from capkit.models.matmul_core import MatMulCore  # noqa: E402
from capkit.runtime import Captioner  # noqa: E402
from capkit.runtime.bundle import load_bundle  # noqa: E402
from capkit.runtime.manifest import MANIFEST_NAME, BundleError, check_manifest  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
CORES = {"lstm": (nn.LSTM, {}), "gru": (nn.GRU, {}), "rnn-tanh": (nn.RNN, {}),
         "rnn-relu": (nn.RNN, {"nonlinearity": "relu"}), "lstm-no-bias": (nn.LSTM, {"bias": False})}


def as_tuple(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def initial_state(lstm: bool, kind: str, batch: int, generator: torch.Generator):
    """None, zeros or random (2 layers, ``batch`` rows, hidden 12): h, or (h, c) for an LSTM."""
    if kind == "none":
        return None
    def make() -> torch.Tensor:  # (2, B, 12)
        return torch.zeros(2, batch, 12) if kind == "zero" else torch.randn(2, batch, 12, generator=generator)
    return (make(), make()) if lstm else make()


# -- MatMulCore against the PyTorch modules ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CORES))
def test_matmul_core_equals_the_torch_module(name: str) -> None:
    """2 layers, batches 1, 3 and 8, 5 time steps, state None / zeros / random: the same outputs and final state
    within 1e-6 in float32, in the module's own return structure."""
    module, kwargs = CORES[name]
    torch.manual_seed(0)
    core = module(7, 12, num_layers=2, batch_first=True, dropout=0.25, **kwargs).eval()
    unrolled = MatMulCore(core)
    assert not unrolled.training
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3, 8):
        inputs = torch.randn(batch, 5, 7, generator=generator)  # (B, T, features)
        for kind in ("none", "zero", "random"):
            state = initial_state(module is nn.LSTM, kind, batch, generator)
            with torch.no_grad():
                expected_out, expected_state = core(inputs, state)
                out, next_state = unrolled(inputs, state)
            assert type(next_state) is type(expected_state) and out.shape == expected_out.shape == (batch, 5, 12)
            assert torch.allclose(out, expected_out, rtol=0, atol=1e-6), (batch, kind)
            for got, want in zip(as_tuple(next_state), as_tuple(expected_state), strict=True):
                assert got.shape == want.shape == (2, batch, 12)
                assert torch.allclose(got, want, rtol=0, atol=1e-6), (batch, kind)


def test_matmul_core_reads_the_cores_own_parameters() -> None:
    """No copies: the wrapper's parameters are the core's, and a change of the core's weights changes its output."""
    core = nn.GRU(4, 6, num_layers=2, batch_first=True).eval()
    unrolled = MatMulCore(core)
    assert [id(p) for p in unrolled.parameters()] == [id(p) for p in core.parameters()]
    inputs = torch.randn(2, 1, 4)  # (B, T, features)
    with torch.no_grad():
        core.weight_hh_l1.mul_(-1.5)
        assert torch.allclose(unrolled(inputs)[0], core(inputs)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("core, words", [
    (nn.Linear(3, 4), ("nn.LSTM, nn.GRU or nn.RNN", "Linear")),
    (nn.LSTM(3, 4), ("batch_first",)),
    (nn.GRU(3, 4, batch_first=True, bidirectional=True), ("bidirectional",)),
    (nn.LSTM(3, 4, batch_first=True, proj_size=2), ("proj_size 2",)),
], ids=["not-recurrent", "time-first", "bidirectional", "projection"])
def test_matmul_core_refuses_what_it_does_not_compute(core: nn.Module, words: tuple[str, ...]) -> None:
    with pytest.raises(ModelConfigError) as caught:
        MatMulCore(core)
    assert "\n" not in str(caught.value) and all(w in str(caught.value) for w in words), str(caught.value)


def test_matmul_core_refuses_training_with_dropout_between_layers() -> None:
    """Its function is the eval-mode one: it has no dropout, so training with the core's dropout is refused."""
    unrolled = MatMulCore(nn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.5))  # training mode, as the core
    with pytest.raises(ModelConfigError, match=r"no dropout between layers .*\.eval\(\)"):
        unrolled(torch.zeros(1, 1, 3))
    assert unrolled.eval()(torch.zeros(1, 1, 3))[0].shape == (1, 1, 4)
    with pytest.raises(ModelConfigError, match=r"batched inputs \(B, T, features\)"):
        unrolled(torch.zeros(1, 3))


# -- matmul bundles ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def matmul_bundles(export_kit, tmp_path_factory):
    """export_kit's models of each decoder kind exported with cell="matmul" (once per module), keyed by kind."""
    root, bundles = tmp_path_factory.mktemp("matmul"), {}

    def bundle(kind: str, layers: int):
        if kind not in bundles:
            model = export_kit.model(kind, layers)
            bundles[kind] = export_model(model, export_kit.vocab, export_kit.spec, export_kit.max_length,
                                         root / kind, cell="matmul")
        return bundles[kind]
    return bundle


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_matmul_bundle_passes_the_parity_check(export_kit, matmul_bundles, kind: str, layers: int) -> None:
    """Export's own check (export/checks.py): 1e-4 and every greedy and seeded caption equal to PyTorch's."""
    model = export_kit.model(kind, layers)
    bundle = matmul_bundles(kind, layers)
    assert isinstance(model.core, nn.RNNBase) and not model.training  # the caller's model is not changed
    report = check_bundle(model, bundle, export_kit.images)
    assert report.passed, report.render()
    assert report.greedy_equal == report.sampled_equal == 32 and report.greedy_distinct >= 3
    assert bundle.manifest.cell == "matmul"


def test_matmul_graphs_have_no_recurrent_operator(export_kit, matmul_bundles, kind: str, layers: int) -> None:
    matmul, operator = matmul_bundles(kind, layers), export_kit.bundle(kind, layers)
    for graph in ("encoder_path", "decoder_path"):
        matmul_ops, operator_ops = op_types(getattr(matmul, graph)), op_types(getattr(operator, graph))
        assert not matmul_ops & RECURRENT_OPS and "Gemm" in matmul_ops, (graph, matmul_ops)
        assert operator_ops & RECURRENT_OPS == {kind.upper()}, (graph, operator_ops)


def test_matmul_and_operator_bundles_caption_alike(export_kit, matmul_bundles, kind: str, layers: int) -> None:
    """The runtime's Captioner: the same greedy captions from both forms of one model, on 32 images."""
    matmul, operator = matmul_bundles(kind, layers), export_kit.bundle(kind, layers)
    labels = [None] * len(export_kit.images)
    captions = [Captioner(b, device="cpu", threads=1).caption_pixels(export_kit.images, labels)
                for b in (matmul, operator)]
    assert [c.tokens for c in captions[0]] == [c.tokens for c in captions[1]]
    assert len({c.text for c in captions[0]}) >= 3
    assert max(abs(a.logprob - b.logprob) for a, b in zip(*captions)) < 1e-4


def test_manifest_records_the_cell(export_kit, matmul_bundles, tmp_path: Path) -> None:
    matmul, operator = matmul_bundles("lstm", 1), export_kit.bundle("lstm")
    for bundle, cell in ((matmul, "matmul"), (operator, "operator")):
        data = json.loads((bundle.folder / MANIFEST_NAME).read_text())
        assert data["cell"] == cell and load_bundle(bundle.folder).manifest.cell == cell
    data = json.loads((matmul.folder / MANIFEST_NAME).read_text())
    assert check_manifest({k: v for k, v in data.items() if k != "cell"}).cell == "operator"  # bundles before it
    for value, shown in (("MatMul", "'MatMul'"), (None, "null"), (1, "1"), (["matmul"], "['matmul']")):
        with pytest.raises(BundleError) as caught:
            check_manifest({**data, "cell": value})
        assert str(caught.value) == f"cell: must be one of operator, matmul, got {shown}"
    folder = tmp_path / "bundle"  # at load: the folder, then the field
    folder.mkdir()
    for path in matmul.folder.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / MANIFEST_NAME).write_text(json.dumps({**data, "cell": "unrolled"}))
    with pytest.raises(BundleError, match=r"^\S+: cell: must be one of operator, matmul, got 'unrolled'$"):
        load_bundle(folder)


def test_a_bad_cell_is_one_line_and_changes_nothing(export_kit, tmp_path: Path) -> None:
    model = export_kit.model("lstm")
    core, state = model.core, copy.deepcopy(model.state_dict())
    for value in ("unrolled", "MATMUL", None, 1):
        with pytest.raises(ExportError) as caught:
            export_model(model, export_kit.vocab, export_kit.spec, 5, tmp_path / "b", cell=value)
        assert str(caught.value) == f"unknown recurrent cell form {value!r}; one of operator, matmul"
    with pytest.raises(ExportError, match="unknown recurrent cell form 'gemm'"):  # before the checkpoint is read
        export_checkpoint(tmp_path / "no-such.pt", tmp_path / "c", cell="gemm")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert model.core is core and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_export_command_cell_option(export_kit, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = CliRunner().invoke(export_command, ["--checkpoint", str(checkpoint), "--out", str(out), "--cell", "matmul",
                                                 "--no-check", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cell"] == "matmul" and report["passed"]
    assert "matmul cell" in result.stderr
    assert load_bundle(out).manifest.cell == "matmul" and not op_types(out / "decoder_step.onnx") & RECURRENT_OPS
    refused = CliRunner().invoke(export_command, ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "r"),
                                                  "--cell", "unrolled"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "Invalid value for '--cell'" in refused.stderr and "'operator', 'matmul'" in refused.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # the torch.export-based exporter takes some seconds a graph
def test_matmul_cell_with_the_torch_export_exporter(export_kit, tmp_path: Path) -> None:
    model = export_kit.model("gru")
    bundle = export_model(model, export_kit.vocab, export_kit.spec, export_kit.max_length, tmp_path, opset=18,
                          cell="matmul")
    assert bundle.manifest.provenance["exporter"] == "torch.export" and bundle.manifest.cell == "matmul"
    assert not (op_types(bundle.encoder_path) | op_types(bundle.decoder_path)) & RECURRENT_OPS
    report = check_bundle(model, bundle, export_kit.images)
    assert report.passed, report.render()


@pytest.mark.slow  # static quantization of the encoder calibrates on 32 images
def test_int8_and_fp16_variants_of_a_matmul_bundle(export_kit, matmul_bundles, tmp_path: Path) -> None:
    """Both variants are written, keep cell "matmul", and compare as test_export's variant test expects; int8
    quantizes the cell's matrix products (no recurrent operator to quantize)."""
    from capkit.export.quantize import write_variant

    fp32 = matmul_bundles("lstm", 1)
    for precision in ("int8", "fp16"):
        report = write_variant(fp32, precision, tmp_path / precision, export_kit.images)
        variant = load_bundle(report.folder)
        assert variant.manifest.precision == precision and variant.manifest.cell == "matmul"
        assert report.images == 32 and 0 <= report.greedy_equal <= 32 and report.size_bytes < report.fp32_size_bytes
        captions = Captioner(variant, device="cpu", threads=1).caption_pixels(export_kit.images, [None] * 32)
        assert all(c.ok for c in captions)
        decoder_ops = op_types(variant.decoder_path)
        assert not decoder_ops & (RECURRENT_OPS | {"DynamicQuantizeLSTM"})
        if precision == "int8":
            assert decoder_ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, decoder_ops
