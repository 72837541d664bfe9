"""`capkit bench` and its library (capkit.bench) on a tiny model.

No timing thresholds: the checks are on structure and consistency (positive times, every ratio
equal to the quotient of the figures reported next to it, peak memory of the right child), never on
how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from capkit.bench import (BenchError, BenchReport, CaptionerTimer, ImageSet, IsolatedStep, Stats, TimedInference,
                          bench_bundle, bench_checkpoint, caption_command, cold_start, compare, machine_info, measure,
                          render_text, run_child, synthetic_photos)
from capkit.runtime.decoding import DecodingOptions, decode

torch = pytest.importorskip("torch")

from capkit.cli import main  # noqa: E402
from capkit.runtime.captioner import Captioner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAST = dict(batch_sizes=[1, 2], repeats=2, warmup=1, max_length=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest's


@pytest.fixture(scope="module")
def bundle(export_kit) -> Path:
    return export_kit.bundle("lstm").folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    return synthetic_photos(tmp_path_factory.mktemp("photos"), count=3, size=(80, 60))


@pytest.fixture(scope="module")
def phones(tmp_path_factory) -> list[str]:
    """Stand-ins for phone-size photos: larger JPEGs than `photos` (the tiny model's resize is small)."""
    return synthetic_photos(tmp_path_factory.mktemp("phones"), count=2, size=(400, 300), prefix="phone")


def positive(stats: dict) -> bool:
    return stats["median"] > 0 and stats["p90"] >= stats["median"] and stats["runs"] >= 1


# -- the pieces ---------------------------------------------------------------------------------------------------
def test_stats_and_measure() -> None:
    stats = Stats.of([0.001, 0.002, 0.003, 0.004, 0.010])
    assert stats.median == pytest.approx(3.0) and stats.p90 == pytest.approx(7.6) and stats.runs == 5
    assert stats.unit == "ms" and Stats.from_dict(stats.to_dict()) == stats
    calls = []
    samples = measure(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(samples) == 4 and all(s >= 0 for s in samples)
    with pytest.raises(BenchError):
        measure(lambda: None, repeats=0, warmup=0)
    with pytest.raises(BenchError):
        Stats.of([])


def test_timed_inference_is_transparent(export_kit) -> None:
    from capkit.runtime.onnx_inference import OnnxInference

    inference = OnnxInference(export_kit.bundle("lstm"), device="cpu")
    timed = TimedInference(inference)
    assert hasattr(timed, "greedy_step")  # the loop takes the same path through the wrapper
    vocab, images = export_kit.vocab, export_kit.images[:4]
    options = DecodingOptions(max_length=export_kit.max_length)
    expected = decode(inference, images, options, vocab)
    got = decode(timed, images, options, vocab)
    assert [r.tokens for r in got] == [r.tokens for r in expected]
    assert timed.encode_seconds > 0 and 1 <= timed.steps <= export_kit.max_length
    assert timed.steps == max(len(r.tokens) + r.finished for r in expected)  # one step per generated token

    class StepOnly:  # an inference without greedy_step: the wrapper must not invent one
        encode, step, select = inference.encode, inference.step, inference.select

    assert not hasattr(TimedInference(StepOnly()), "greedy_step")
    state = inference.encode(images)
    cached = TimedInference(inference, encoded=state)
    assert cached.encode(images) is state


def test_isolated_step_chains_the_inferences_greedy_step(export_kit) -> None:
    """The isolated step is the inference's own greedy_step, each call fed the previous call's outputs."""
    from capkit.runtime.onnx_inference import OnnxInference

    inference = OnnxInference(export_kit.bundle("lstm"), device="cpu")
    vocab, pixels = export_kit.vocab, export_kit.images[:1]
    (expected,) = decode(inference, pixels, DecodingOptions(max_length=export_kit.max_length),
                         vocab)
    calls, returned = [], []

    class Spy:
        encode, select = inference.encode, inference.select

        def greedy_step(self, tokens, state):
            calls.append((tokens, state))
            returned.append(inference.greedy_step(tokens, state))
            return returned[-1]

        def step(self, tokens, state):
            raise AssertionError("the chain must call greedy_step where the inference has one")

    chain = IsolatedStep(Spy(), pixels, vocab.start_id)
    tokens = []
    for _ in range(len(expected.tokens) + expected.finished):
        chain()
        tokens.append(int(chain.tokens[0]))
    assert calls[0][0].tolist() == [vocab.start_id]
    for (tokens_in, state_in), (tokens_out, _, state_out) in zip(calls[1:], returned):
        assert tokens_in is tokens_out and state_in is state_out  # the outputs as they are, as the loop passes them
    assert tokens == [*expected.tokens, *([vocab.end_id] if expected.finished else [])]  # what the loop chose

    class StepOnly:  # no greedy_step: the plain step, its state chained, the token left at <start>
        encode, step, select = inference.encode, inference.step, inference.select

    plain = IsolatedStep(StepOnly(), pixels, vocab.start_id)
    encoded = plain.state
    plain()
    plain()
    assert plain.tokens.tolist() == [vocab.start_id] and plain.state is not encoded


def test_captioner_timer_rounds(export_kit, photos: list[str]) -> None:
    """One round's calls in order, the two sides of each overhead ratio taking turns at going first."""
    from capkit.bench.timing import STEP_CHAINS
    from capkit.runtime.onnx_inference import OnnxInference

    bundle = export_kit.bundle("lstm")
    manifest = bundle.manifest
    captioner = Captioner.from_inference(OnnxInference(bundle, device="cpu", threads=1), manifest.vocab,
                                         manifest.preprocess, manifest.max_length, bundle)
    order: list[str] = []

    class Logged(CaptionerTimer):
        pass

    for method in ("encoder", "decode", "cold_step", "caption", "preprocess", "step_chain", "loop"):
        def logged(self, _name=method):
            order.append(_name)
            return getattr(CaptionerTimer, _name)(self)
        setattr(Logged, method, logged)

    timer = Logged(captioner, photos, max_length=4)
    samples = timer.batch_one(repeats=2, warmup=1)
    chains = {0: ["step_chain", "loop"], 1: ["loop", "step_chain"]}
    rounds = []
    for index, first in enumerate(["decode", "cold_step", "decode"]):
        second = "cold_step" if first == "decode" else "decode"
        rounds += ["encoder", first, second, "caption", "preprocess"]
        for chain in range(STEP_CHAINS):
            rounds += chains[(index * STEP_CHAINS + chain) % 2]
    expected = [called for name in rounds for called in ([name, "step_chain"] if name == "cold_step" else [name])]
    assert order == expected  # cold_step: an encoder run, then a step chain
    assert {key: len(value) for key, value in samples.items()} == {
        "encoder": 2, "decode": 2, "cold_step": 2, "caption": 2, "preprocess": 2, "step": 2 * STEP_CHAINS,
        "loop": 2 * STEP_CHAINS}
    assert len(timer.steps) == 2 * (1 + STEP_CHAINS) and all(1 <= s <= 4 for s in timer.steps)  # warm-up's dropped
    assert all(v > 0 for values in samples.values() for v in values)


def test_import_is_torch_and_onnxruntime_free() -> None:
    script = "import sys, capkit.bench; print(sorted({'torch', 'onnxruntime', 'onnx'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_run_child_reports_the_childs_own_peak_memory() -> None:
    small = run_child([sys.executable, "-c", "print('hi')"])
    big = run_child([sys.executable, "-c", "import numpy as np; a = np.ones(300_000_000 // 8); print(a.sum() > 0)"])
    assert small[2] == 0 and small[3].strip() == "hi" and small[0] > 0
    assert big[2] == 0 and big[3].strip() == "True"
    if small[1] is not None:
        assert big[1] >= 300 and small[1] < big[1] - 200  # MB: the 300 MB array shows, in that child only
    failed = run_child([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert failed[2] == 3


def test_images(tmp_path: Path, photos: list[str]) -> None:
    assert len(photos) == 3 and all(Path(p).suffix == ".jpg" for p in photos)
    from PIL import Image

    assert Image.open(photos[0]).size == (80, 60)
    folder = Path(photos[0]).parent
    with ImageSet([str(folder)]) as named:
        assert named.paths == sorted(photos) and not named.synthetic and named.describe() == "3 image files"
    assert ImageSet([str(folder / "*.jpg")]).paths == sorted(photos)  # glob patterns, expanded here
    with pytest.raises(BenchError, match="no such file"):
        ImageSet([str(tmp_path / "missing.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no images"):
        ImageSet([str(tmp_path / "empty")])
    with ImageSet([], count=2) as synthetic:
        made = list(synthetic.paths)
        assert synthetic.synthetic and len(made) == 2 and all(Path(p).is_file() for p in made)
    assert not any(Path(p).exists() for p in made)  # the temporary folder is removed on close


# -- a bundle, PyTorch, the ratios ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reports(bundle: Path, checkpoint: Path, photos: list[str], phones: list[str]):
    onnx = bench_bundle(bundle, photos, device="cpu", threads=1, cold_runs=1, phone_images=phones, **FAST)
    eager = bench_checkpoint(checkpoint, photos, device="cpu", threads=1, cold_runs=1, **FAST)
    return onnx, eager


@pytest.mark.slow
def test_bundle_report(reports, bundle: Path, export_kit) -> None:
    onnx, _ = reports
    data = onnx.to_dict()
    json.dumps(data)  # serialisable as it is
    assert data["name"] == "onnx fp32" and data["runtime"] == "onnxruntime" and data["precision"] == "fp32"
    assert data["device"] == "cpu" and data["threads"]["encoder"] == 1 and data["threads"]["decoder_step"] == 1
    for key in ("encoder_ms", "step_ms", "loop_ms", "decode_ms", "cold_step_ms", "caption_ms", "preprocess_ms"):
        assert positive(data[key]), key
    assert data["encoder_ms"]["runs"] == 2 and data["step_ms"]["runs"] == data["loop_ms"]["runs"] >= 2
    assert 1 <= data["steps"] <= FAST["max_length"]
    assert data["loop_overhead"] == pytest.approx(data["loop_ms"]["median"] / (data["steps"] * data["step_ms"]["median"]))
    assert data["decode_overhead"] == pytest.approx(
        data["decode_ms"]["median"] / (data["steps"] * data["cold_step_ms"]["median"]))
    assert set(data["throughput"]) == {"1", "2"} and all(positive(s) for s in data["throughput"].values())
    assert set(data["encoder_ms_per_image"]) == {"1", "2"} and all(positive(s) for s in data["encoder_ms_per_image"].values())
    assert all(s["unit"] == "images/s" for s in data["throughput"].values())
    # from preprocessed images, the model alone: no file is read, so it is above the files' figure at batch 2
    assert set(data["model_throughput"]) == {"1", "2"} and all(s["unit"] == "images/s" for s in data["model_throughput"].values())
    assert data["model_throughput"]["2"]["median"] > data["throughput"]["2"]["median"]
    assert data["batch_speedup"]["2"] == pytest.approx(
        data["throughput"]["2"]["median"] / data["throughput"]["1"]["median"])
    assert data["size_bytes"] == export_kit.bundle("lstm").size_bytes() > 0
    assert bool(data["notes"]) == (export_kit.bundle("lstm").manifest.decoder.greedy_outputs is None)
    cold = data["cold_start"]
    assert cold["wall"]["unit"] == "s" and positive(cold["wall"]) and cold["wall"]["runs"] == 1
    command = cold["command"]
    assert command[command.index("--model") + 1] == str(bundle) and command[command.index("--device") + 1] == "cpu"
    expected = Captioner(bundle, device="cpu").caption(cold["command"][cold["command"].index("caption") + 1]).text
    assert cold["output"] == expected  # the child really captioned the image
    if cold["peak_rss_mb"] is not None:
        assert cold["peak_rss_mb"] > 10
    # phone-size photos: captioned and preprocessed apart, and their caption's ratio to a regular photo's
    assert positive(data["phone_caption_ms"]) and positive(data["phone_preprocess_ms"])
    assert data["phone_caption_ms"]["runs"] == data["caption_ms"]["runs"] == 2
    assert data["phone_ratio"] == pytest.approx(data["phone_caption_ms"]["median"] / data["caption_ms"]["median"])
    text = render_text({"machine": machine_info(), "settings": {}, "load_after": None, "targets": [data],
                        "comparisons": []})
    assert "phone photo / caption" in text and f"{data['phone_ratio']:.2f}x" in text


@pytest.mark.slow
def test_pytorch_report_and_ratios(reports, checkpoint: Path) -> None:
    onnx, eager = reports
    data = eager.to_dict()
    assert data["name"] == "pytorch eager" and data["runtime"] == "pytorch" and data["size_bytes"] is None
    assert data["phone_caption_ms"] is None and data["phone_ratio"] is None  # measured without phone photos
    assert data["threads"] == {"torch": 1} and torch.get_num_threads() == 1  # restored afterwards
    assert "--checkpoint" in data["cold_start"]["command"] and str(checkpoint) in data["cold_start"]["command"]
    assert data["cold_start"]["output"] == onnx.cold_start.output  # same weights, same caption
    for key in ("encoder_ms", "step_ms", "loop_ms", "decode_ms", "caption_ms"):
        assert positive(data[key]), key

    ratios = compare(eager, onnx)["ratios"]
    assert ratios["caption"] == pytest.approx(eager.caption.median / onnx.caption.median)
    assert ratios["encoder"] == pytest.approx(eager.encoder.median / onnx.encoder.median)
    assert ratios["step"] == pytest.approx(eager.step.median / onnx.step.median)
    assert ratios["throughput"]["2"] == pytest.approx(onnx.throughput[2].median / eager.throughput[2].median)
    assert ratios["model_throughput"]["2"] == pytest.approx(onnx.model_throughput[2].median / eager.model_throughput[2].median)
    assert ratios["cold_start"] == pytest.approx(eager.cold_start.wall.median / onnx.cold_start.wall.median)
    if onnx.cold_start.peak_rss_mb:
        assert ratios["peak_rss"] == pytest.approx(eager.cold_start.peak_rss_mb / onnx.cold_start.peak_rss_mb)
    assert "size" not in ratios  # PyTorch has no bundle size

    report = BenchReport(machine_info(), {"repeats": 2}, [onnx, eager])
    full = report.to_dict()
    assert [(c["target"], c["baseline"]) for c in full["comparisons"]] == [("onnx fp32", "pytorch eager")]
    text = report.render()
    assert "onnx fp32 vs pytorch eager" in text and "img/s b2" in text and "encoder ms" in text
    assert "model img/s b2" in text
    assert render_text(full, markdown=True).count("|---|") >= 2


@pytest.mark.slow
def test_int8_is_compared_with_fp32(reports, export_kit, tmp_path: Path, photos: list[str]) -> None:
    from capkit.export.quantize import quantize_int8

    onnx, eager = reports
    int8 = quantize_int8(export_kit.bundle("lstm"), tmp_path / "int8", export_kit.images)
    report8 = bench_bundle(int8.folder, photos, device="cpu", threads=1, **FAST)
    assert report8.name == "onnx int8" and report8.cold_start is None
    comparisons = BenchReport(machine_info(), {}, [onnx, report8, eager]).comparisons()
    pairs = [(c["target"], c["baseline"]) for c in comparisons]
    assert pairs == [("onnx fp32", "pytorch eager"), ("onnx int8", "pytorch eager"), ("onnx int8", "onnx fp32")]
    size = comparisons[-1]["ratios"]["size"]
    assert size == pytest.approx(onnx.size_bytes / report8.size_bytes) and size > 1


@pytest.mark.slow
def test_cold_start_failure_is_one_line(tmp_path: Path, photos: list[str]) -> None:
    with pytest.raises(BenchError, match="cold start"):
        cold_start(caption_command(photos[0], ["--model", str(tmp_path / "nowhere"), "--device", "cpu"]), runs=1)


# -- the command --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_command_json(bundle: Path, checkpoint: Path, photos: list[str]) -> None:
    args = ["bench", "--model", str(bundle), "--checkpoint", str(checkpoint), "--images", str(Path(photos[0]).parent),
            "--batch-sizes", "2,1", "--repeats", "1", "--warmup", "0", "--max-length", "5", "--cold-runs", "0",
            "--device", "cpu", "--threads", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [t["name"] for t in data["targets"]] == ["onnx fp32", "pytorch eager"]
    assert data["settings"]["batch_sizes"] == [1, 2] and data["settings"]["images"] == "3 image files"
    assert data["machine"]["cores"] >= 1 and "onnxruntime" in " ".join(data["machine"]["versions"])
    assert all(t["cold_start"] is None and t["steps"] <= 5 for t in data["targets"])
    (comparison,) = data["comparisons"]
    onnx, eager = data["targets"]
    assert comparison["ratios"]["caption"] == pytest.approx(eager["caption_ms"]["median"] / onnx["caption_ms"]["median"])


@pytest.mark.slow
def test_bench_command_text_and_errors(bundle: Path, photos: list[str]) -> None:
    base = ["bench", "--model", str(bundle), "--images", photos[0], "--repeats", "1", "--warmup", "0",
            "--cold-runs", "0", "--device", "cpu", "--batch-sizes", "1"]
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 0, result.output
    assert "encoder ms" in result.stdout and "onnx fp32" in result.stdout and "machine:" in result.stdout
    bad = CliRunner().invoke(main, base[:-1] + ["1,x"])
    assert bad.exit_code == 2 and "comma-separated" in bad.output
    missing = CliRunner().invoke(main, ["bench", "--model", str(Path(photos[0]).parent), "--cold-runs", "0",
                                        "--device", "cpu", "--images", photos[0]])
    assert missing.exit_code == 1 and "Error:" in missing.output and "Traceback" not in missing.output


@pytest.mark.slow
def test_image_set_phone_photos(tmp_path: Path, photos: list[str]) -> None:
    """Synthetic sets get DEFAULT_PHONE_PHOTOS 12 MP JPEGs by default, named files none unless asked for."""
    from PIL import Image

    from capkit.bench.images import DEFAULT_PHONE_PHOTOS, PHONE_PHOTO_SIZE

    with ImageSet([], count=1) as synthetic:
        made = list(synthetic.phone_paths)
        assert len(made) == DEFAULT_PHONE_PHOTOS and len(synthetic.paths) == 1
        assert all(Image.open(p).size == PHONE_PHOTO_SIZE == (4032, 3024) for p in made)
        assert all(1.5e6 < Path(p).stat().st_size < 3e6 for p in made)  # about 2 MB, like a phone's
        assert "4032x3024" in synthetic.describe()
    assert not any(Path(p).exists() for p in made)
    with ImageSet([], count=1, phones=0) as none:
        assert none.phone_paths == [] and "phone" not in none.describe()
    with ImageSet([photos[0]]) as named:
        assert named.phone_paths == [] and named.describe() == "1 image files"
    with ImageSet([photos[0]], phones=1) as asked:
        assert len(asked.phone_paths) == 1 and asked.describe().startswith("1 image files + 1 synthetic 4032x3024")
        made = asked.phone_paths
    assert not Path(made[0]).exists()


@pytest.mark.slow
def test_bench_command_phone_photos(bundle: Path, photos: list[str]) -> None:
    args = ["bench", "--model", str(bundle), "--images", photos[0], "--phone-photos", "1", "--repeats", "1",
            "--warmup", "0", "--cold-runs", "0", "--device", "cpu", "--batch-sizes", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (target,) = data["targets"]
    assert "4032x3024" in data["settings"]["images"]
    assert target["phone_ratio"] == pytest.approx(target["phone_caption_ms"]["median"] / target["caption_ms"]["median"])
    assert target["phone_preprocess_ms"]["median"] > 0
    plain = CliRunner().invoke(main, args[:5] + args[7:])  # named images alone: no phone photos
    assert plain.exit_code == 0 and json.loads(plain.stdout)["targets"][0]["phone_ratio"] is None


@pytest.mark.slow
def test_bundle_bench_is_torch_free(bundle: Path, photos: list[str]) -> None:
    """`capkit bench --model` (no --checkpoint) never imports torch or onnx."""
    script = textwrap.dedent(f"""
        import json, sys
        from capkit.cli import main
        main(["bench", "--model", {str(bundle)!r}, "--images", {photos[0]!r}, "--repeats", "1", "--warmup", "0",
              "--cold-runs", "0", "--device", "cpu", "--batch-sizes", "1", "--json"], standalone_mode=False)
        print("FORBIDDEN=" + json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "onnx", "torchvision"}})))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "FORBIDDEN=[]"
    assert json.loads(proc.stdout.strip().splitlines()[0])["targets"][0]["name"] == "onnx fp32"
