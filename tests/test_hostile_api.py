"""The Python API and a few command-line edges against hostile input: an argument of the wrong type is a
TypeError, bad data (a closed Pillow image, a La image, a file object, a row of NaN pixels, logits that are
not finite) a one-line capkit error of that image alone; extreme temperatures, top-k and top-p print no numpy
warning; ``capkit export`` refuses an opset outside what the exporter writes and prints no torch warning for
a pickle. The whole surface, counted, is tests/hostile_readers.py's API suite (slow: it builds a bundle)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import hostile_corpus  # noqa: E402  (tests/ is on sys.path: conftest)
import hostile_readers  # noqa: E402
from PIL import Image

from capkit.runtime import Captioner, DecodingOptions, ImageError
from capkit.runtime.decoding import TokenIds, decode
from capkit.runtime.errors import CapkitError
from capkit.runtime import logits
from capkit.runtime.preprocess import PreprocessSpec, preprocess
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

SPEC = PreprocessSpec(resize=16, crop=16)
VOCAB = Vocabulary(SPECIAL_TOKENS + tuple(f"w{i}" for i in range(12)))


class MeanInference:
    """Logits from each image's mean pixel: different images, different captions; a white image (mean > 2)
    gives NaN logits, as a broken model would."""

    def encode(self, images: np.ndarray) -> np.ndarray:
        return images.mean(axis=(1, 2, 3)).astype(np.float64)  # (B,)

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.sin(np.outer(state + 0.1 * tokens, np.arange(1, len(VOCAB) + 1)))  # (B, V)
        scores[state > 2.0] = np.nan
        return scores.astype(np.float32), state

    def select(self, state: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return state[rows]


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    return Captioner.from_inference(MeanInference(), VOCAB, SPEC, 6)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("good")
    paths = []
    for name, colour in (("red.png", (200, 30, 30)), ("blue.png", (30, 30, 200))):
        Image.new("RGB", (20, 20), colour).save(folder / name)
        paths.append(str(folder / name))
    return paths


def assert_one_line(message: str, *words: str) -> None:
    assert message and "\n" not in message, message
    for word in words:
        assert word in message, message


def assert_batch_keeps_the_good(captioner: Captioner, good: list[str], bad: Any, *words: str) -> None:
    captions = captioner.caption_batch([good[0], bad, good[1]], batch_size=2)
    assert [c.ok for c in captions] == [True, False, True]
    assert [captions[0].tokens, captions[2].tokens] == [captioner.caption(g).tokens for g in good]
    assert_one_line(captions[1].error, *words)


# -- wrong argument types: TypeError -------------------------------------------------------------------------------
WRONG_ARGUMENTS: dict[str, tuple[Callable[[Captioner, list[str]], Any], str]] = {
    "Captioner(limits='big')": (lambda c, g: Captioner("nowhere", limits="big"), "limits"),
    "Captioner(limits=None)": (lambda c, g: Captioner("nowhere", limits=None), "limits"),
    "Captioner(5)": (lambda c, g: Captioner(5), "bundle"),
    "Captioner(fast_decode='no')": (lambda c, g: Captioner("nowhere", fast_decode="no"), "fast_decode"),
    "from_inference(limits=1)": (lambda c, g: Captioner.from_inference(MeanInference(), VOCAB, SPEC, 6, limits=1), "limits"),
    "caption_batch(5)": (lambda c, g: c.caption_batch(5), "got int"),
    "caption_batch(None)": (lambda c, g: c.caption_batch(None), "got NoneType"),
    "iter_captions(3.5)": (lambda c, g: c.iter_captions(3.5), "got float"),
    "caption_batch(one array)": (lambda c, g: c.caption_batch(np.zeros((8, 8, 3), np.uint8)), "use caption()"),
    "caption(img, 'greedy')": (lambda c, g: c.caption(g[0], "greedy"), "options must be a DecodingOptions"),
    "caption(img, {'temperature': 1})": (lambda c, g: c.caption(g[0], {"temperature": 1}), "options"),
    "caption(img, temprature=1)": (lambda c, g: c.caption(g[0], temprature=1), "temprature"),
    "caption_pixels(..., options='x')": (lambda c, g: c.caption_pixels(np.zeros((1, 3, 16, 16), np.float32), ["a"], "x"),
                                         "options"),
}


@pytest.mark.parametrize("name", WRONG_ARGUMENTS)
def test_a_wrong_argument_type_is_a_type_error(captioner, good, name: str) -> None:
    """As the class docstring says: TypeError, one line naming the argument (AttributeError, a TypeError from
    deep inside, or a silently accepted ``fast_decode="no"`` before)."""
    call, word = WRONG_ARGUMENTS[name]
    with pytest.raises(TypeError) as e:
        call(captioner, good)
    assert_one_line(str(e.value), word)


# -- bad data: one image's error -----------------------------------------------------------------------------------
def closed_image(path: str) -> Image.Image:
    img = Image.open(path)
    img.close()
    return img


def test_a_closed_pillow_image_is_an_image_error(captioner, good) -> None:
    with pytest.raises(ImageError, match=r"red\.png: the Pillow image is closed"):
        captioner.caption(closed_image(good[0]))
    assert_batch_keeps_the_good(captioner, good, closed_image(good[0]), "the Pillow image is closed")


def test_a_file_object_is_refused_with_what_to_pass(captioner, good) -> None:
    with open(good[0], "rb") as f:
        assert_batch_keeps_the_good(captioner, good, f, "file object", "pass its path, or its bytes")
    assert_batch_keeps_the_good(captioner, good, io.BytesIO(b"\x89PNG"), "BytesIO")


@pytest.mark.parametrize("mode", ["La", "LA", "PA", "RGBa", "I;16B", "1", "CMYK", "LAB", "HSV"])
def test_every_pillow_mode_is_converted(mode: str) -> None:
    """La (premultiplied grey and alpha) was 'corrupt or unreadable' before: Pillow converts it to LA only."""
    img = Image.new(mode, (10, 10))
    assert preprocess(img, SPEC).shape == (3, 16, 16)


def test_rows_of_nan_or_inf_pixels_are_their_own_errors(captioner, good) -> None:
    rows = np.stack([captioner.preprocess(good[0]), np.full((3, 16, 16), np.nan, np.float32),
                     np.full((3, 16, 16), np.inf, np.float32), captioner.preprocess(good[1])])
    captions = captioner.caption_pixels(rows, ["red", "nan", "inf", "blue"])
    assert [c.ok for c in captions] == [True, False, False, True]
    assert captions[0].tokens == captioner.caption(good[0]).tokens
    assert captions[1].error == "nan: its pixels are not all finite numbers (NaN or infinity)"


def test_logits_that_are_not_finite_are_that_images_error(captioner, good, tmp_path: Path) -> None:
    """A model that gives NaN for one image: LogitsError alone, that image's error in a batch, with no numpy
    warning (its NaN logprob was a caption before, and "invalid value" warnings on the way)."""
    white = tmp_path / "white.png"
    Image.new("RGB", (20, 20), (255, 255, 255)).save(white)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for options in ({}, {"temperature": 1.0, "seed": 1}, {"temperature": 0.5, "top_p": 0.9}, {"beam": 3}):
            with pytest.raises(logits.LogitsError, match="logits are not finite"):
                captioner.caption(white, **options)
            captions = captioner.caption_batch([good[0], white, good[1]], **options)
            assert [c.ok for c in captions] == [True, False, True], options
            assert_one_line(captions[1].error, "white.png: cannot be captioned", "not finite")


def test_a_nan_logprob_from_the_inference_itself_is_refused() -> None:
    """The greedy fast path takes the token and its log-probability from the inference (the step graph):
    a NaN there is the same one-line error."""
    class NanGreedy(MeanInference):
        def greedy_step(self, tokens, state):
            return np.full(len(tokens), 4, np.int64), np.full(len(tokens), np.nan), state

    with pytest.raises(logits.LogitsError):
        decode(NanGreedy(), np.zeros((2, 3, 4, 4), np.float32), DecodingOptions(max_length=3), TokenIds(1, 2))


class Fixed:
    """The same logits row at every step."""

    def __init__(self, row: np.ndarray):
        self.row = row.astype(np.float32)

    def encode(self, images):
        return np.zeros(len(images))

    def step(self, tokens, state):
        return np.tile(self.row, (len(tokens), 1)), state

    def select(self, state, rows):
        return state[rows]


@pytest.mark.parametrize("row", [np.linspace(-3, 3, 12)[::-1], np.r_[np.full(11, -3e38), 3e38],
                                 np.r_[np.full(11, -np.inf), 1.0]], ids=["plain", "float32 extremes", "masked"])
@pytest.mark.parametrize("options", [{"temperature": 1e-320}, {"temperature": 5e-324, "top_k": 3},
                                     {"temperature": 1e-300, "top_p": 0.5}, {"temperature": 1e308, "top_p": 1e-300},
                                     {"temperature": 1e-320, "top_k": 10 ** 12, "top_p": 1e-300}])
def test_extreme_sampling_options_warn_nothing_and_pick_the_best_word(row: np.ndarray, options: dict) -> None:
    """Scores overflow to -inf for a tiny temperature: the exact limit, so the best word is picked, silently
    (numpy's "overflow encountered in divide" reached stderr before)."""
    images = np.zeros((2, 3, 4, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampled = decode(Fixed(row), images, DecodingOptions(max_length=4, seed=3, **options), TokenIds(1, 2))
    best = int(np.argmax(row))
    assert [r.tokens for r in sampled] == [(best,) * 4] * 2
    assert all(np.isfinite(r.logprob) for r in sampled)


# -- capkit export: opsets and pickles -----------------------------------------------------------------------------
def test_an_opset_outside_the_exporters_range_is_refused(tmp_path: Path) -> None:
    """Checked before the checkpoint is read; the range is what torch's exporter and onnx both know."""
    import onnx
    from click.testing import CliRunner
    from torch.onnx import _constants

    from capkit.cli import main
    from capkit.export.onnx_export import supported_opsets

    newest = min(_constants.ONNX_MAX_OPSET, onnx.defs.onnx_opset_version())
    assert supported_opsets() == range(11, newest + 1)
    for opset in (newest + 1, 99):
        result = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "absent.pt"), "--opset", str(opset)])
        assert result.exit_code == 1, result.output
        assert result.stderr.strip() == f"Error: opset must be an integer from 11 to {newest}, got {opset}"


def test_an_exporter_that_writes_another_opset_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's exporter keeps opset 18 where it cannot convert, saying nothing: the bundle is refused, not
    labelled with the opset it does not have."""
    from capkit.export import onnx_export
    from capkit.export.staging import ExportError
    from capkit.models import CaptionModel, CaptionModelConfig

    model = CaptionModel(CaptionModelConfig(vocab_size=len(VOCAB), encoder="resnet18", embed_dim=8, hidden_dim=8))
    monkeypatch.setattr(onnx_export, "_write_graphs", lambda *args: None)
    monkeypatch.setattr(onnx_export, "graph_opset", lambda path: 18)
    with pytest.raises(ExportError, match="asked for opset 20, the exporter wrote opset 18"):
        onnx_export.export_model(model, VOCAB, SPEC, 6, tmp_path / "bundle", opset=20)
    assert not (tmp_path / "bundle").exists()


class Harmless:
    def __reduce__(self):
        return (os.getpid, ())  # a callable a weights-only load must refuse to call, harmless if it did


@pytest.mark.parametrize("loader", ["checkpoint", "encoder weights"])
def test_a_pickle_is_refused_without_torchs_warning(tmp_path: Path, loader: str) -> None:
    """A plain pickle (protocol 4) made torch warn about its protocol, in two lines, before capkit's refusal:
    as ``capkit export --checkpoint`` and as ``capkit train --encoder-weights``."""
    import torchvision

    from capkit.models.captioning import load_encoder_weights
    from capkit.training.checkpoint import load_checkpoint

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Harmless(), protocol=4))
    load = (lambda: load_checkpoint(path)) if loader == "checkpoint" else \
        (lambda: load_encoder_weights(path, torchvision.models.resnet18(), "resnet18"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CapkitError, match="weights_only=True"):
            load()
    assert [str(w.message) for w in caught] == []


# -- the whole surface, and the command's stderr, with a real bundle (slow) -----------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return hostile_corpus.tiny_bundle(tmp_path_factory.mktemp("api") / "bundle")


@pytest.mark.slow
def test_the_api_suite_counts_in_a_child(bundle: Path, tmp_path: Path) -> None:
    suite = hostile_readers
    results = suite.run_surface("api", tmp_path, bundle)
    broken = [f"{r.name!r}: {'; '.join(r.problems)}" for r in results if r.problems]
    assert not broken, "\n".join(broken)
    counts = suite.summary(results)
    assert counts["tried"] >= 100 and counts["refused cleanly"] == counts["hostile"] >= 70
    assert counts["results lost"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--temp", "1e-320"], ["--temp", "5e-324", "--top-k", "3"],
                                  ["--temp", "1e-320", "--top-p", "0.5"], ["--temp", "1e308", "--top-p", "1e-300"]])
def test_capkit_caption_prints_nothing_on_stderr(bundle: Path, tmp_path: Path, args: list[str]) -> None:
    image = tmp_path / "good.png"
    Image.new("RGB", (48, 40), (20, 160, 90)).save(image)
    env = {k: v for k, v in os.environ.items() if k not in ("CAPKIT_DEBUG", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-m", "capkit", "caption", str(image), "--model", str(bundle), "--device", "cpu",
                           *args], capture_output=True, text=True, env=env, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "") and proc.stdout.strip()
