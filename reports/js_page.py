#!/usr/bin/env python
"""The README's picture of the captioning page, docs/js-page.png: `capkit serve-web`'s page (clients/web) in
headless Chromium, right after it captioned one image with a bundle (greedy, in the browser).

    scripts/demo.sh                        # first: the demo model, exported to runs/latest/bundle
    .venv/bin/python reports/js_page.py    # the demo bundle captions a demo test image; writes docs/js-page.png
    .venv/bin/python reports/js_page.py --test-image 3 --print       # another test image; no picture written
    .venv/bin/python reports/js_page.py --model BUNDLE --image photo.jpg --out page.png

Without ``--image`` the image is one of the demo's test images (``--test-image N``, from the folder
``capkit data synthetic`` prints), the one `scripts/demo.sh` captions first by default. Those are 64x64
pixels, so the page's preview of the image is shown ``--scale`` times its size (pixelated) in the picture;
the page captions the file itself. The caption the page showed is printed beside the Python runtime's for
the same file; they must be equal (the parity tests/test_js_parity.py checks), else the script exits 1. It
needs node, clients/js's npm packages and Chromium (scripts/setup.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

from capkit.reports.common import DOCS, REPO, capkit, say, shown_path

PAGE_IMAGE = DOCS / "js-page.png"
BROWSER_CHECK = REPO / "clients" / "js" / "tools" / "browser-check.mjs"  # drives the page; also the tests' tool


def demo_test_image(index: int) -> Path:
    """The ``index``-th test image of the demo data (generated first when missing, as `capkit data synthetic` does)."""
    proc = subprocess.run(capkit("data", "synthetic"), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit("capkit data synthetic failed")
    folder = Path(proc.stdout.strip())
    images = json.loads((folder / "annotations" / "captions_test.json").read_text())["images"]
    if not 0 <= index < len(images):
        raise SystemExit(f"--test-image must be 0 to {len(images) - 1}, got {index}")
    return folder / "images" / images[index]["file_name"]


def run_page(bundle: Path, job: dict, work: Path) -> dict:
    """tools/browser-check.mjs's answer (out.json) for ``job`` (its options, less the page's URL and Chromium's
    path), with the page served for ``bundle`` by `capkit serve-web`'s server."""
    from capkit.cli.serve_web import make_server

    node = shutil.which("node")
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if node is None or chromium is None or not (REPO / "clients" / "js" / "node_modules" / "puppeteer-core").is_dir():
        raise SystemExit("needs node, Chromium and clients/js's npm packages (scripts/setup.sh installs them)")
    server = make_server(bundle, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = {"url": f"http://localhost:{server.server_address[1]}/", "outDir": str(work), "chromium": chromium, **job}
        (work / "job.json").write_text(json.dumps(job))
        proc = subprocess.run([node, str(BROWSER_CHECK), str(work / "job.json"), str(work / "out.json")],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"the browser run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return json.loads((work / "out.json").read_text())
    finally:
        server.shutdown()


def page_caption(bundle: Path, image: Path, scale: int, screenshot: Path, work: Path) -> dict:
    """What the page shows after captioning ``image`` with ``bundle`` ({state, caption, error, ...}); its
    picture, with the preview ``scale`` times the image's size, is saved as ``screenshot``."""
    return run_page(bundle, {"image": str(image), "screenshot": str(screenshot), "screenshotOnly": True,
                             "previewScale": scale}, work)["good"]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "latest" / "bundle", help="the bundle")
    parser.add_argument("--image", type=Path, default=None, help="the image [default: a demo test image]")
    parser.add_argument("--test-image", type=int, default=0, help="which demo test image (without --image)")
    parser.add_argument("--scale", type=int, default=4, help="the preview this many times the image's size")
    parser.add_argument("--out", type=Path, default=PAGE_IMAGE, help="where the picture goes")
    parser.add_argument("--print", dest="print_section", action="store_true",
                        help="print the captions only, writing no picture")
    args = parser.parse_args(argv)
    if not (args.model / "capkit.json").is_file():
        raise SystemExit(f"no bundle at {shown_path(args.model)}: run scripts/demo.sh first, or give --model")
    from capkit.runtime import Captioner

    with tempfile.TemporaryDirectory(prefix="capkit-page-") as folder:
        work = Path(folder)
        image = args.image or demo_test_image(args.test_image)
        python = Captioner(args.model, device="cpu").caption(image).text
        shown = page_caption(args.model, image, max(1, args.scale), work / "page.png", work)
        say(f"page: {shown['caption']!r}; Python runtime: {python!r}")
        if shown["state"] != "done" or shown["caption"] != python:
            raise SystemExit(f"the page did not show the Python runtime's caption ({shown['state']}: "
                             f"{shown['error'] or shown['caption']})")
        if not args.print_section:
            shutil.copyfile(work / "page.png", args.out)
            say(f"{shown_path(args.out)} written")
    print(python)


if __name__ == "__main__":
    main()
