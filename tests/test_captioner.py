"""Captioner (ONNX Runtime over an exported bundle) against the PyTorch reference through the same loop.

The models are conftest's ``export_kit``: tiny captioners trained a few hundred steps so that
their captions differ from image to image (a random-weight one says the same thing for every
image, and the comparisons below could not fail). Their bundles are shared with test_export.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capkit.runtime import Caption, Captioner, DecodingOptions, DecodingOptionsError, ImageError
from capkit.runtime.decoding import BeamSearchDecoder, DecodingResult, decode
from capkit.runtime.preprocess import preprocess_batch

torch = pytest.importorskip("torch")

from capkit.export.checks import synthetic_images  # noqa: E402
from capkit.training.torch_inference import TorchInference  # noqa: E402

HOT = 1.5  # a sampling temperature at which these confident models still vary their captions
# conftest's one_torch_thread: tiny models are as fast on one thread, and several crawl on busy cores.
# Tests that take `kind` run once per decoder kind (conftest's KINDS).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Raw uint8 images of varied sizes and colours."""
    return synthetic_images(12, seed=2)


@pytest.fixture(scope="module")
def models(export_kit) -> dict:
    return {kind: export_kit.model(kind, layers) for kind, layers in export_kit.kinds.items()}


@pytest.fixture(scope="module")
def captioners(export_kit) -> dict[str, Captioner]:
    # threads=1: ONNX Runtime's spinning worker threads slow the PyTorch reference down on small machines
    return {kind: Captioner(export_kit.bundle(kind, layers).folder, device="cpu", threads=1)
            for kind, layers in export_kit.kinds.items()}


def reference(captioner: Captioner, model, images: list, **options) -> list[DecodingResult]:
    """The PyTorch model through the same preprocessing and the same decode loop (options built here)."""
    options = DecodingOptions(max_length=captioner.manifest.max_length, **options)
    return decode(TorchInference(model), preprocess_batch(images, captioner.manifest.preprocess), options,
                  captioner.vocab)


def assert_same(captioner: Captioner, captions: list[Caption], results: list[DecodingResult]) -> None:
    assert len(captions) == len(results)
    for caption, result in zip(captions, results):
        assert caption.ok, caption.error
        assert caption.tokens == result.tokens
        assert caption.logprob == pytest.approx(result.logprob, abs=1e-4)
        assert caption.finished == result.finished
        assert caption.text == captioner.vocab.decode(result.tokens)


def assert_varied(captions: list[Caption]) -> None:
    """Guards the comparisons against degenerate models: the images must not all get one caption."""
    assert len({c.tokens for c in captions}) > 2, [c.text for c in captions]


def test_captioner_attributes(captioners, export_kit) -> None:
    captioner = captioners["lstm"]
    assert captioner.vocab == export_kit.vocab
    assert captioner.spec == captioner.manifest.preprocess == export_kit.spec
    assert captioner.max_length == captioner.manifest.max_length == export_kit.max_length
    assert captioner.device == "cpu"
    assert captioner.bundle.folder == export_kit.bundle("lstm").folder
    assert "device='cpu'" in repr(captioner)


def test_greedy_matches_pytorch(captioners, models, images, kind: str) -> None:
    captioner = captioners[kind]
    captions = captioner.caption_batch(images)
    assert_same(captioner, captions, reference(captioner, models[kind], images))
    assert_varied(captions)
    assert all(c.finished and 0 < len(c.tokens) < captioner.max_length for c in captions)


@pytest.mark.parametrize("filters", [{}, {"top_k": 5}, {"top_k": 8, "top_p": 0.9}], ids=str)
def test_seeded_sampling_matches_pytorch(captioners, models, images, kind: str, filters: dict) -> None:
    captioner = captioners[kind]
    greedy = [c.tokens for c in captioner.caption_batch(images)]
    seen, off_greedy = set(), 0
    for seed in (0, 1, 2):
        captions = captioner.caption_batch(images, temperature=HOT, seed=seed, **filters)
        assert_same(captioner, captions, reference(captioner, models[kind], images, temperature=HOT, seed=seed,
                                                   **filters))
        again = captioner.caption_batch(images, temperature=HOT, seed=seed, **filters)
        assert [c.tokens for c in again] == [c.tokens for c in captions]  # a seed fixes the caption
        seen |= {c.tokens for c in captions}
        off_greedy += sum(c.tokens != g for c, g in zip(captions, greedy))
    assert len(seen) > 4 and off_greedy > 0  # the samples really vary: the comparison can fail


@pytest.mark.parametrize("options", [{}, {"temperature": HOT, "seed": 7}, {"temperature": HOT, "top_p": 0.9, "seed": 3},
                                     {"beam": 3}], ids=str)
def test_batch_equals_single(captioners, images, kind: str, options: dict) -> None:
    captioner = captioners[kind]
    single = [captioner.caption(image, **options) for image in images]
    for batch_size in (1, 5, 16):  # 12 images: one at a time, chunks with a partial last one, one chunk
        batch = captioner.caption_batch(images, batch_size=batch_size, **options)
        assert [(c.tokens, c.finished) for c in batch] == [(c.tokens, c.finished) for c in single]
        assert [c.logprob for c in batch] == pytest.approx([c.logprob for c in single], abs=1e-5)
    reverse = captioner.caption_batch(images[::-1], **options)  # nor does the order of the images
    assert [c.tokens for c in reverse] == [c.tokens for c in single[::-1]]
    assert_varied(single)


def test_rows_finish_at_different_steps(captioners, images) -> None:
    """The batch shrinks as rows end: captions of several lengths come out of one batch."""
    for kind in captioners:
        assert len({len(c.tokens) for c in captioners[kind].caption_batch(images)}) > 1


def test_beam_one_is_greedy_and_beam_three_scores_at_least_as_well(captioners, images, kind: str) -> None:
    captioner = captioners[kind]
    ids = captioner.vocab
    pixels = preprocess_batch(images, captioner.spec)
    options = DecodingOptions(max_length=captioner.manifest.max_length)
    greedy = decode(captioner.inference, pixels, options, ids)
    beam1 = decode(captioner.inference, pixels, options, ids,
                   decoder=BeamSearchDecoder(ids.start_id, ids.end_id, 1))
    assert [(r.tokens, r.finished) for r in beam1] == [(r.tokens, r.finished) for r in greedy]
    assert [r.logprob for r in beam1] == pytest.approx([r.logprob for r in greedy], abs=1e-6)
    assert [c.tokens for c in captioner.caption_batch(images, beam=1)] == [r.tokens for r in greedy]

    beam3 = captioner.caption_batch(images, beam=3)
    assert [b.logprob >= g.logprob - 1e-6 for b, g in zip(beam3, greedy)] == [True] * len(images), \
        [(b.text, b.logprob, g.logprob) for b, g in zip(beam3, greedy)]


def test_beam_search_matches_pytorch(captioners, models, images, kind: str) -> None:
    """Beam search (the beams as the step graph's batch) over the bundle and over the PyTorch model.
    (That beam search finds what greedy misses is tested on a scripted model in test_decoding: these
    small models are too confident for it to show.)"""
    captioner = captioners[kind]
    ids = captioner.vocab
    expected = decode(TorchInference(models[kind]), preprocess_batch(images, captioner.spec),
                      DecodingOptions(max_length=captioner.max_length), ids,
                      decoder=BeamSearchDecoder(ids.start_id, ids.end_id, 5))
    assert_same(captioner, captioner.caption_batch(images, beam=5), expected)


def test_top_k_one_is_greedy(captioners, images, kind: str) -> None:
    greedy = captioners[kind].caption_batch(images)
    for seed in (0, 5):
        sampled = captioners[kind].caption_batch(images, temperature=HOT, top_k=1, seed=seed)
        assert [c.tokens for c in sampled] == [c.tokens for c in greedy]
        assert [c.logprob for c in sampled] == pytest.approx([c.logprob for c in greedy], abs=1e-9)


def test_every_image_kind_gives_the_same_caption(captioners, images, tmp_path: Path) -> None:
    captioner = captioners["gru"]
    texts = set()
    for i, array in enumerate(images[:4]):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        path = tmp_path / f"image{i}.png"
        path.write_bytes(buffer.getvalue())
        expected = captioner.caption(array)
        texts.add(expected.text)
        for source in (path, str(path), buffer.getvalue(), Image.fromarray(array), Image.open(path)):
            caption = captioner.caption(source)
            assert (caption.tokens, caption.text) == (expected.tokens, expected.text), type(source)
        assert captioner.caption(path).image == str(path) == captioner.caption(Image.open(path)).image
        assert captioner.caption(buffer.getvalue()).image is None and expected.image is None
    assert len(texts) > 1


def test_a_bad_image_in_a_batch(captioners, images, tmp_path: Path) -> None:
    captioner = captioners["lstm"]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    sources = [images[0], tmp_path / "missing.png", images[1], corrupt, b"junk", text, images[2],
               np.zeros((4, 4), np.float64)]
    results = captioner.caption_batch(sources, batch_size=3)
    assert [r.ok for r in results] == [True, False, True, False, False, False, True, False]
    good = captioner.caption_batch(images[:3])
    assert [r.tokens for r in results if r.ok] == [g.tokens for g in good]
    for result, name in zip([results[i] for i in (1, 3, 4, 5)], ["missing.png", "corrupt.png", "<bytes>", "notes.jpg"]):
        assert name in result.error and "\n" not in result.error
        assert result.text == "" and result.tokens == () and result.logprob is None and not result.ok
    assert results[1].image == str(tmp_path / "missing.png")
    assert results[1].to_dict() == {"image": str(tmp_path / "missing.png"), "error": results[1].error}
    assert results[0].to_dict() == {"image": None, "caption": good[0].text, "tokens": list(good[0].tokens),
                                    "logprob": results[0].logprob}
    with pytest.raises(ImageError, match="missing.png"):  # a single caption raises instead
        captioner.caption(tmp_path / "missing.png")


@pytest.mark.parametrize("options, word", [
    ({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"top_p": 0.0}, "top-p"), ({"top_p": 1.5}, "top-p"),
    ({"top_p": float("nan")}, "top-p"), ({"top_k": 0}, "top-k"), ({"top_k": 2.5}, "top-k"), ({"beam": 0}, "beam"),
    ({"beam": 3, "temperature": 0.5}, "beam"), ({"max_length": 0}, "max-length"), ({"seed": -1}, "seed"),
    ({"temperature": "hot"}, "temperature"),
])
def test_bad_options_fail_before_any_work(captioners, tmp_path: Path, options: dict, word: str) -> None:
    captioner = captioners["lstm"]
    missing = tmp_path / "missing.png"  # would raise ImageError if it were read first
    with pytest.raises(DecodingOptionsError, match=word):
        captioner.caption(missing, **options)
    with pytest.raises(DecodingOptionsError, match=word):
        captioner.iter_captions([missing], **options)  # lazy, yet checked at once
    with pytest.raises(DecodingOptionsError, match="batch size"):
        captioner.caption_batch([missing], batch_size=0)


def test_max_length(captioners, images) -> None:
    captioner = captioners["rnn"]
    full = captioner.caption_batch(images)
    assert full == captioner.caption_batch(images, max_length=captioner.max_length)  # None: the manifest's
    short = captioner.caption_batch(images, max_length=2)
    assert all(len(c.tokens) <= 2 for c in short) and any(not c.finished for c in short)
    for s, f in zip(short, full):
        assert s.tokens == f.tokens[:2]
    assert captioner.caption_batch([]) == []


def test_default_bundle_from_environment(export_kit, captioners, images, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPKIT_MODEL", str(export_kit.bundle("gru").folder))
    captioner = Captioner(device="cpu")
    assert captioner.bundle.folder == export_kit.bundle("gru").folder
    assert [c.tokens for c in captioner.caption_batch(images)] == [c.tokens for c in captioners["gru"].caption_batch(images)]
    import capkit

    assert capkit.Captioner is Captioner


def test_from_inference_runs_the_pytorch_model(captioners, models, images) -> None:
    onnx = captioners["lstm"]
    torch_captioner = Captioner.from_inference(TorchInference(models["lstm"]), onnx.vocab, onnx.spec, onnx.max_length)
    assert torch_captioner.bundle is None and torch_captioner.device == "cpu"
    assert [c.tokens for c in torch_captioner.caption_batch(images)] == [c.tokens for c in onnx.caption_batch(images)]
