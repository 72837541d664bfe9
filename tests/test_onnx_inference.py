"""OnnxInference, the runtime's Inference over a bundle: against the PyTorch reference through the one
decode loop, IO binding against plain runs, devices, session options and bad bundles."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from capkit.runtime.bundle import load_bundle  # noqa: E402
from capkit.runtime.decoding import DecodingOptions, decode  # noqa: E402
from capkit.runtime.errors import CapkitError  # noqa: E402
from capkit.runtime.manifest import MANIFEST_NAME, BundleError  # noqa: E402
from capkit.runtime.onnx_inference import OnnxInference  # noqa: E402
from capkit.runtime.providers import CpuFallbackWarning, RuntimeUnavailableError, nvidia_driver_present  # noqa: E402
from capkit.training.torch_inference import TorchInference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one thread is far faster on a loaded machine
GREEDY = DecodingOptions(max_length=10)
SAMPLING = [DecodingOptions(max_length=10, temperature=0.7, seed=3),
            DecodingOptions(max_length=10, temperature=1.3, seed=11, top_k=5),
            DecodingOptions(max_length=10, temperature=1.0, seed=0, top_p=0.8)]


def run(inference, images: np.ndarray, options: DecodingOptions, vocab):
    return decode(inference, images, options, vocab)


def tokens(results) -> list[tuple[int, ...]]:
    return [r.tokens for r in results]


def test_greedy_and_sampling_match_pytorch(export_kit, kind: str, layers: int) -> None:
    """Identical token sequences for all 32 images, greedy and seeded sampling (also top-k, top-p)."""
    model, bundle = export_kit.model(kind, layers), export_kit.bundle(kind, layers)
    onnx_inf, torch_inf = OnnxInference(bundle, device="cpu"), TorchInference(model)
    images, vocab = export_kit.images, export_kit.vocab
    greedy = run(onnx_inf, images, GREEDY, vocab)
    assert tokens(greedy) == tokens(run(torch_inf, images, GREEDY, vocab))
    assert len(set(tokens(greedy))) >= 3, "varied captions, so that the comparison can fail"
    for options in SAMPLING:
        sampled = run(onnx_inf, images, options, vocab)
        reference = run(torch_inf, images, options, vocab)
        assert tokens(sampled) == tokens(reference), options
        assert [r.logprob for r in sampled] == pytest.approx([r.logprob for r in reference], abs=1e-4)
        assert len(set(tokens(sampled))) >= 3


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_io_binding_matches_plain_runs(export_kit, kind: str, layers: int) -> None:
    bundle = export_kit.bundle(kind, layers)
    plain, bound = OnnxInference(bundle, device="cpu"), OnnxInference(bundle, device="cpu", io_binding=True)
    assert not plain.io_binding and bound.io_binding
    images, vocab = export_kit.images, export_kit.vocab
    state = bound.encode(images[:4])
    assert all(isinstance(s, ort.OrtValue) for s in state)  # kept as OrtValues between steps
    reference = plain.encode(images[:4])
    assert all(np.array_equal(s.numpy(), r) for s, r in zip(state, reference))
    step_tokens = np.array([1, 5, 9, 2], np.int64)
    logits, state = bound.step(step_tokens, state)
    ref_logits, reference = plain.step(step_tokens, reference)
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32 and np.array_equal(logits, ref_logits)
    rows = np.array([3, 0, 0, 2])  # reordered, repeated, one dropped: what beam search asks for
    selected, reference_selected = bound.select(state, rows), plain.select(reference, rows)
    assert all(np.array_equal(s.numpy(), r) for s, r in zip(selected, reference_selected))
    assert all(np.array_equal(r, s[:, rows]) for r, s in zip(reference_selected, reference))
    for options in (GREEDY, SAMPLING[0], DecodingOptions(max_length=10, beam=3)):
        a, b = run(bound, images, options, vocab), run(plain, images, options, vocab)
        assert tokens(a) == tokens(b) and [r.logprob for r in a] == [r.logprob for r in b]


def test_plain_select_gathers_rows(export_kit) -> None:
    inference = OnnxInference(export_kit.bundle("lstm"), device="cpu")
    state = inference.encode(export_kit.images[:3])
    picked = inference.select(state, np.array([2, 2, 0]))
    assert [s.shape for s in picked] == [(1, 3, 32), (1, 3, 32), (1, 3, 16)]  # h, c, image_embedding
    assert np.array_equal(picked[1][:, 0], state[1][:, 2]) and np.array_equal(picked[0][:, 2], state[0][:, 0])


def test_devices(export_kit, capfd: pytest.CaptureFixture) -> None:
    bundle = export_kit.bundle("lstm")
    cpu = OnnxInference(bundle, device="cpu")
    assert cpu.device == "cpu" and cpu.providers == ["CPUExecutionProvider"] and not cpu.io_binding
    with pytest.raises(RuntimeUnavailableError, match="unknown device 'tpu'"):
        OnnxInference(bundle, device="tpu")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = OnnxInference(bundle, device="auto")
    fallbacks = [w for w in caught if issubclass(w.category, CpuFallbackWarning)]
    if auto.device == "cuda":  # a machine where CUDA really works
        assert auto.io_binding and auto.providers[0] == "CUDAExecutionProvider" and not fallbacks
        return
    assert auto.providers == ["CPUExecutionProvider"]
    expected = "CUDAExecutionProvider" in ort.get_available_providers() and nvidia_driver_present()
    assert len(fallbacks) == (1 if expected else 0)  # one clear line, only where a GPU is expected to work
    if expected:
        assert "running on the CPU" in str(fallbacks[0].message)
    with pytest.raises(RuntimeUnavailableError, match="device cuda"):
        OnnxInference(bundle, device="cuda")
    err = capfd.readouterr().err
    assert "onnxruntime" not in err.lower(), err  # ONNX Runtime's own CUDA load errors are kept quiet


def test_session_options(export_kit, tmp_path: Path) -> None:
    bundle, images, vocab = export_kit.bundle("gru"), export_kit.images, export_kit.vocab
    expected = tokens(run(OnnxInference(bundle, device="cpu"), images, GREEDY, vocab))
    for kwargs in ({"threads": 1}, {"graph_optimization": "disabled"}, {"graph_optimization": "basic", "threads": 2}):
        assert tokens(run(OnnxInference(bundle, device="cpu", **kwargs), images, GREEDY, vocab)) == expected
    with pytest.raises(CapkitError, match="threads"):
        OnnxInference(bundle, device="cpu", threads=0)
    with pytest.raises(CapkitError, match="graph optimization"):
        OnnxInference(bundle, device="cpu", graph_optimization="max")

    cache = tmp_path / "cache"
    first = OnnxInference(bundle, device="cpu", optimized_model_dir=cache)
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 2 and all(bundle.manifest.encoder.sha256[:16] in n or bundle.manifest.decoder.sha256[:16] in n
                                    for n in cached)
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    second = OnnxInference(bundle, device="cpu", optimized_model_dir=cache)  # loads the optimised graphs
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    for inference in (first, second):
        assert tokens(run(inference, images, GREEDY, vocab)) == expected


def test_accepts_a_folder(export_kit) -> None:
    inference = OnnxInference(str(export_kit.bundle("lstm").folder), device="cpu")
    assert inference.bundle.manifest.vocab == export_kit.vocab


def copy_bundle(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_manifest_names_must_match_the_graphs(export_kit, tmp_path: Path) -> None:
    folder = copy_bundle(export_kit.bundle("lstm").folder, tmp_path / "b")
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["graphs"]["decoder_step"]["logits_output"] = "scores"
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="no tensor named scores"):
        OnnxInference(load_bundle(folder), device="cpu")


def test_unloadable_graph_is_a_bundle_error(export_kit, tmp_path: Path) -> None:
    folder = copy_bundle(export_kit.bundle("lstm").folder, tmp_path / "b")
    (folder / "decoder_step.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(BundleError, match="ONNX Runtime cannot load it"):
        OnnxInference(load_bundle(folder, verify=False), device="cpu")
