"""The JavaScript runtime (clients/js) against the Python runtime on the same bundle and images.

Python exports the bundles (export_kit), writes the images (the awkward ones of test_preprocess.py and
a few synthetic photos) and captions them; Node captions them with clients/js; the two must agree:
greedy and beam-3 tokens on every image, seeded sampling on at least 95% of image-seed pairs, input
tensors within one 8-bit level, PNG and JPEG alike (Node decodes JPEG with sharp, i.e. libvips with
libjpeg-turbo, Pillow's decoder). Skipped (not failed) where node or clients/js/node_modules is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "clients" / "js"
FIXTURES = JS / "test" / "fixtures"
NODE = shutil.which("node")
RANDOM_SEEDS = (0, 1, 12345, 2**64 + 3)
SAMPLING = {"temperature": 0.7, "top_k": 5, "top_p": 0.9}
SEEDS = tuple(range(8))

needs_node = pytest.mark.skipif(NODE is None or not (JS / "node_modules").is_dir(),
                                reason="node or clients/js/node_modules missing (scripts/setup.sh installs them)")


def numpy_stream(seed: int, n: int = 1000) -> list[float]:
    return np.random.default_rng(seed).random(n).tolist()


def pillow_resize_cases() -> list[dict]:
    """Pillow's resize of small noise images (bilinear, bicubic, lanczos; shrinking and enlarging)."""
    cases = []
    rng = np.random.default_rng(7)
    for (w, h), (ow, oh), interpolation in [((13, 7), (5, 3), "bilinear"), ((40, 9), (9, 2), "bilinear"),
                                            ((6, 5), (14, 11), "bilinear"), ((31, 17), (8, 20), "bicubic"),
                                            ((23, 29), (7, 9), "lanczos"), ((9, 9), (9, 4), "bilinear")]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        from capkit.runtime.preprocess import INTERPOLATIONS
        out = np.asarray(Image.fromarray(pixels).resize((ow, oh), INTERPOLATIONS[interpolation]))
        cases.append({"width": w, "height": h, "data": pixels.ravel().tolist(), "out_width": ow, "out_height": oh,
                      "interpolation": interpolation, "expected": out.ravel().tolist()})
    return cases


def fixture_files() -> dict[str, object]:
    """What clients/js/test/fixtures holds for `node --test` (no Python there): numpy's stream, Pillow's resize."""
    return {"numpy_random.json": {str(seed): numpy_stream(seed) for seed in RANDOM_SEEDS},
            "pillow_resize.json": pillow_resize_cases()}


def test_node_fixtures_are_what_numpy_and_pillow_give() -> None:
    """The committed fixtures of the Node tests equal numpy's and Pillow's output now (regenerate with
    ``python tests/test_js_parity.py``)."""
    for name, expected in fixture_files().items():
        assert json.loads((FIXTURES / name).read_text()) == expected, f"{name} is stale: run python tests/test_js_parity.py"


# --- the images --------------------------------------------------------------------------------

def write_images(folder: Path) -> list[str]:
    """The awkward images of test_preprocess.py and some synthetic photos (PNG, and JPEG below the
    reduced-decoding threshold: 4:4:4, 4:2:0, progressive, greyscale, CMYK, and one with an ICC profile
    that neither runtime applies)."""
    from capkit.export.checks import synthetic_images

    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(img: Image.Image, name: str, **params) -> None:
        img.save(folder / name, **params)
        paths.append(str(folder / name))

    rng = np.random.default_rng(11)
    save(Image.fromarray(rng.integers(0, 256, (45, 60), dtype=np.uint8), "L"), "grey.png")
    palette = Image.fromarray(rng.integers(0, 4, (40, 50), dtype=np.uint8), "L").convert("P")
    palette.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 30, 60, 250] + [0] * (256 * 3 - 12))
    palette.info["transparency"] = 1
    save(palette, "palette.png", transparency=1)
    rgba = rng.integers(0, 256, (50, 41, 4), dtype=np.uint8)
    save(Image.fromarray(rgba, "RGBA"), "rgba.png")
    save(Image.fromarray(rgba[:, :, [0, 3]], "LA"), "la.png")
    two = np.zeros((20, 40, 3), np.uint8)
    two[:, :20] = (255, 0, 0)
    two[:, 20:] = (0, 0, 255)
    for orientation in (3, 6, 8, 2):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(Image.fromarray(two), f"exif{orientation}.jpg", format="JPEG", exif=exif, quality=95, subsampling=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(Image.fromarray(rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)), "exif6.png", exif=exif)
    save(Image.fromarray(rng.integers(0, 256, (40, 400, 3), dtype=np.uint8)), "panorama.png")
    save(Image.fromarray(rng.integers(0, 256, (300, 30, 3), dtype=np.uint8)), "tall.png")
    for i, pixels in enumerate(synthetic_images(10, seed=3)):
        if i % 3 == 0 and min(pixels.shape[:2]) < 64:
            save(Image.fromarray(pixels), f"photo{i}.jpg", format="JPEG", quality=95, subsampling=0)
        else:
            save(Image.fromarray(pixels), f"photo{i}.png")
    photo = synthetic_images(1, seed=17)[0][:60]  # JPEG variants jpeg-js decodes differently from libjpeg
    save(Image.fromarray(photo), "photo420.jpg", format="JPEG", quality=85, subsampling=2)
    save(Image.fromarray(photo), "progressive.jpg", format="JPEG", quality=90, progressive=True)
    save(Image.fromarray(photo).convert("L"), "grey.jpg", format="JPEG", quality=90)
    save(Image.fromarray(photo).convert("CMYK"), "cmyk.jpg", format="JPEG", quality=90)
    save(Image.fromarray(photo), "icc.jpg", format="JPEG", quality=90, icc_profile=gamma_one_profile())
    big = np.kron(synthetic_images(1, seed=9)[0], np.ones((4, 4, 1), np.uint8))  # a large photo: a strong downscale
    save(Image.fromarray(big), "large.png")
    return paths


def gamma_one_profile() -> bytes:
    """An RGB ICC profile that is not sRGB (lcms's sRGB with gamma 1 curves): applying it would change pixels."""
    import struct

    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    for i in range(struct.unpack(">I", icc[128:132])[0]):
        tag, offset, _ = struct.unpack(">4sII", icc[132 + 12 * i:144 + 12 * i])
        if tag in (b"rTRC", b"gTRC", b"bTRC") and icc[offset:offset + 4] == b"para":
            icc[offset + 12:offset + 16] = struct.pack(">i", 1 << 16)
    return bytes(icc)


def run_node(job: dict, folder: Path, timeout: float = 600) -> dict:
    (folder / "job.json").write_text(json.dumps(job))
    result = subprocess.run([NODE, str(JS / "tools" / "parity.mjs"), str(folder / "job.json"), str(folder / "out.json")],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((folder / "out.json").read_text())


@needs_node
@pytest.mark.slow
def test_js_runtime_matches_python(export_kit, tmp_path: Path) -> None:
    from capkit.runtime import Captioner
    from capkit.runtime.preprocess import preprocess

    images = write_images(tmp_path / "images")
    bundles = {kind: export_kit.bundle(kind) for kind in ("lstm", "gru")}
    job = {"bundles": {kind: str(b.folder) for kind, b in bundles.items()}, "images": images,
           "seeds": list(SEEDS), "sampling": SAMPLING, "random": [[str(seed), 1000] for seed in RANDOM_SEEDS]}
    out = run_node(job, tmp_path)
    assert out["jpegDecoder"] == "sharp", "sharp does not load in clients/js (npm ci there); jpeg-js is no match for libjpeg"

    for seed in RANDOM_SEEDS:  # numpy's default_rng stream, bit for bit
        assert out["random"][str(seed)] == numpy_stream(seed)

    spec = bundles["lstm"].manifest.preprocess
    level = 1 / 255 / min(spec.std)  # one 8-bit level in normalised units
    worst = {"png": 0.0, "jpeg": 0.0}
    for image, found in zip(images, out["bundles"]["lstm"]):
        expected = preprocess(image, spec)
        got = np.asarray(found["tensor"], np.float32).reshape(expected.shape)
        kind = "jpeg" if image.endswith(".jpg") else "png"
        worst[kind] = max(worst[kind], float(np.abs(got - expected).max()) / level)
        # PNG (pngjs) and JPEG (sharp: libjpeg-turbo, ISLOW IDCT, fancy upsampling, as in Pillow) pixels
        # decode identically, so the resampling alone is compared: within one level
        assert np.abs(got - expected).max() <= level * (1 + 1e-6), (image, worst)
    report = {"tensor_max_levels_png": round(worst["png"], 3), "tensor_max_levels_jpeg": round(worst["jpeg"], 3)}

    for kind, bundle in bundles.items():
        captioner = Captioner(bundle, device="cpu", threads=1)
        same = total = 0
        texts = set()
        for image, found in zip(images, out["bundles"][kind]):
            greedy = captioner.caption(image)
            texts.add(greedy.text)
            assert found["greedy"]["tokens"] == list(greedy.tokens), (kind, image)
            assert found["greedy"]["text"] == greedy.text
            assert found["greedy"]["logprob"] == pytest.approx(greedy.logprob, rel=1e-5, abs=1e-6)
            beam = captioner.caption(image, beam=3)
            assert found["beam"]["tokens"] == list(beam.tokens), (kind, image)
            assert found["beam"]["logprob"] == pytest.approx(beam.logprob, rel=1e-5, abs=1e-6)
            for seed, tokens in zip(SEEDS, found["sampled"]):
                total += 1
                same += tokens == list(captioner.caption(image, seed=seed, **SAMPLING).tokens)
        assert len(texts) > 1, "the model says the same thing for every image: a weak comparison"
        report[f"{kind}_sampling_equal"] = f"{same}/{total}"
        assert same >= 0.95 * total, report
    print("js parity:", report)


@needs_node
@pytest.mark.slow
def test_js_runtime_refuses_bad_input_in_one_line(export_kit, tmp_path: Path) -> None:
    source = export_kit.bundle("lstm").folder
    tampered = tmp_path / "tampered"
    shutil.copytree(source, tampered)
    graph = tampered / "decoder_step.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    future = tmp_path / "future"
    shutil.copytree(source, future)
    manifest = json.loads((future / "capkit.json").read_text())
    manifest["format_version"] = 2
    (future / "capkit.json").write_text(json.dumps(manifest))
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:0] + b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    cases = {
        "tampered": ({"bundle": str(tampered), "image": str(good)}, f"{tampered}: decoder_step.onnx has sha256 "),
        "future": ({"bundle": str(future), "image": str(good)}, "format_version: must be the integer 1"),
        "missing bundle": ({"bundle": str(tmp_path / "nothing"), "image": str(good)}, "no such bundle folder"),
        "corrupt jpeg": ({"bundle": str(source), "image": str(corrupt)}, f"{corrupt}: corrupt or unreadable image"),
        "truncated png": ({"bundle": str(source), "image": str(truncated)}, f"{truncated}: corrupt or unreadable image"),
        "not an image": ({"bundle": str(source), "image": str(text)}, "not an image file"),
        "missing image": ({"bundle": str(source), "image": str(tmp_path / "no.png")}, "no such file"),
        "temperature": ({"bundle": str(source), "image": str(good), "options": {"temperature": -1}},
                        "temperature must be a finite number >= 0, got -1"),
        "beam and sampling": ({"bundle": str(source), "image": str(good), "options": {"beam": 2, "temperature": 0.5}},
                              "beam search is deterministic"),
        "beam limit": ({"bundle": str(source), "image": str(good), "options": {"beam": 65}},
                       "beam 65 is over the limit of 64 (Limits.max_beam"),
        "unknown option": ({"bundle": str(source), "image": str(good), "options": {"temprature": 1}}, "unknown option"),
        "top-k type": ({"bundle": str(source), "image": str(good), "options": {"top_k": "5"}},
                       "top-k must be an integer, got '5'"),
    }
    out = run_node({"errors": {label: action for label, (action, _) in cases.items()}}, tmp_path)
    for label, (_, expected) in cases.items():
        found = out["errors"][label]
        assert not found.get("ok"), label
        assert found["capkit"], (label, found)  # a CapkitError, not a TypeError from deep inside
        assert expected in found["message"] and "\n" not in found["message"], (label, found)


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_browser = pytest.mark.skipif(CHROMIUM is None or not (JS / "node_modules" / "puppeteer-core").is_dir(),
                                   reason="chromium or puppeteer-core missing (scripts/setup.sh installs them where apt-get can)")
TIMING_REPEATS = int(os.environ.get("CAPKIT_JS_TIMING_REPEATS", "5"))  # captions timed per setting in the page test


def serve(folder: Path):
    """`capkit serve-web`'s server for ``folder`` on a free port, in a thread; returns (server, url)."""
    import threading

    from capkit.cli.serve_web import make_server

    server = make_server(folder, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://localhost:{server.server_address[1]}/"


@needs_node
@needs_browser
@pytest.mark.slow
def test_page_captions_in_headless_chromium_like_node(export_kit, tmp_path: Path) -> None:
    """The page (clients/web) over `capkit serve-web`'s server: an image given to its file input is
    captioned as Node captions it; a bad option, a corrupt image and a tampered bundle each show one
    line on the page, and the page goes on (no uncaught error). Saves page.png in tmp_path."""
    from capkit.export.checks import synthetic_images

    bundle = export_kit.bundle("lstm").folder
    image = tmp_path / "photo.png"
    Image.fromarray(synthetic_images(1, seed=21)[0]).resize((120, 90), Image.Resampling.NEAREST).save(image)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    data = bytearray((tampered / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "encoder.onnx").write_bytes(bytes(data))
    node = run_node({"bundles": {"lstm": str(bundle)}, "images": [str(image)], "seeds": [], "sampling": SAMPLING},
                    tmp_path)["bundles"]["lstm"][0]["greedy"]

    good, url = serve(bundle)
    bad, bad_url = serve(tampered)
    try:
        job = {"url": url, "tamperedUrl": bad_url, "image": str(image), "corrupt": str(corrupt), "outDir": str(tmp_path),
               "repeats": TIMING_REPEATS, "threads": [1, 2] if TIMING_REPEATS > 5 else [1], "chromium": CHROMIUM}
        (tmp_path / "browser.json").write_text(json.dumps(job))
        result = subprocess.run([NODE, str(JS / "tools" / "browser-check.mjs"), str(tmp_path / "browser.json"),
                                 str(tmp_path / "browser-out.json")], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        out = json.loads((tmp_path / "browser-out.json").read_text())
    finally:
        good.shutdown()
        bad.shutdown()
    assert out["loaded"]["state"] == "ready" and "warming up" in out["loaded"]["status"], out["loaded"]
    assert out["warmUps"] >= 1  # the page's warm-up ran, and the upload stopped it (the caption below is still right)
    assert out["good"]["state"] == "done" and out["good"]["caption"] == node["text"], (out["good"], node)
    assert out["good"]["tokens"] == node["tokens"]
    assert out["badOption"]["error"] == "temperature must be a finite number >= 0, got -1"
    assert out["corrupt"]["error"] == "corrupt.jpg: corrupt or unreadable image (the browser cannot decode it)"
    assert out["afterCorrupt"]["caption"] == node["text"]  # the page goes on after an error
    assert out["tampered"]["state"] == "error" and "encoder.onnx has sha256" in out["tampered"]["error"]
    assert out["badWarmUp"]["state"] == "ready"  # the model still captions; the bad ?warmup= is said in one line
    assert out["badWarmUp"]["error"] == "no warm-up: warm-up time must be a number of milliseconds >= 0, got -1"
    assert out["pageErrors"] == []
    assert (tmp_path / "page.png").stat().st_size > 1000
    # The README's speed figures: CAPKIT_JS_TIMING_REPEATS=40 pytest tests/test_js_parity.py -k page -s
    from capkit.runtime import Captioner

    captioner = Captioner(bundle, device="cpu", threads=1)
    times = []
    for _ in range(TIMING_REPEATS + 1):
        started = time.perf_counter()
        captioner.caption(image)
        times.append((time.perf_counter() - started) * 1e3)
    print("browser caption:", out["good"]["caption"], "timing:", out["timings"],
          f"python (1 thread) median_ms: {sorted(times[1:])[len(times[1:]) // 2]:.1f}")


if __name__ == "__main__":  # regenerates clients/js/test/fixtures
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, content in fixture_files().items():
        (FIXTURES / name).write_text(json.dumps(content) + "\n")
        print("wrote", FIXTURES / name)
