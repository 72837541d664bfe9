"""One bundle-manifest contract for both runtimes: the shared table of hostile manifests
(clients/js/test/fixtures/hostile_manifests.json), read here and by the JavaScript runtime's tests
(clients/js/test/hostile-manifests.test.js), each row a tampering of the tiny bundle and the one line
both runtimes refuse it with.

Here every row is applied to a copy of the tiny bundle (clients/js/test/fixtures/tiny-bundle, written by
clients/js/tools/generate_tiny_bundle.py) and loaded with capkit.runtime's Captioner, which must raise a
CapkitError with the row's message (after "<bundle>: "), or one holding each of its fragments; legal rows
must load and caption. The tampering steps are the same in clients/js/tools/hostile-manifests.mjs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from capkit.runtime import Captioner
from capkit.runtime.errors import CapkitError
from capkit.runtime.limits import Limits

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "clients" / "js"
FIXTURES = JS / "test" / "fixtures"
NODE = shutil.which("node")
TABLE = json.loads((FIXTURES / "hostile_manifests.json").read_text())["rows"]
_spec = importlib.util.spec_from_file_location("generate_tiny_bundle", JS / "tools" / "generate_tiny_bundle.py")
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)


# -- the tampering steps (clients/js/tools/hostile-manifests.mjs does the same in JavaScript) --------------

def _step_into(doc: Any, path: list) -> tuple[Any, Any]:
    """The container of ``path``'s last key, and that key."""
    for key in path[:-1]:
        doc = doc[key]
    return doc, path[-1]


def tamper(bundle: Path, steps: list[dict[str, Any]]) -> None:
    """Applies a row's steps to ``bundle`` (a copy of the tiny bundle with ``../outside`` beside it). Edits of
    capkit.json are collected and written once: a value is put in as the row's raw JSON text (``32.0``, ``NaN``,
    a 5000-digit integer), which no JSON library writes as such."""
    manifest = bundle / "capkit.json"
    doc, raw, edited = json.loads(manifest.read_text()), {}, False

    def put(path: list, text: str) -> None:
        mark = f"@raw{len(raw)}@"
        raw[json.dumps(mark)] = text
        container, key = _step_into(doc, path)
        if isinstance(container, list) and key == len(container):
            container.append(mark)
        else:
            container[key] = mark

    for step in steps:
        edited = edited or any(key in step for key in ("set", "nest", "delete", "rehash"))
        target = bundle / next((step[key] for key in ("write", "remove", "mkdir", "symlink", "fifo") if key in step), "")
        if "set" in step:
            put(step["set"], step["json"] * step.get("repeat", 1))
        elif "nest" in step:
            put(step["nest"], "[" * step["levels"] + "]" * step["levels"])
        elif "delete" in step:
            container, key = _step_into(doc, step["delete"])
            del container[key]
        elif "rehash" in step:
            digest = hashlib.sha256((bundle / doc["graphs"][step["rehash"]]["file"]).read_bytes()).hexdigest()
            put(["graphs", step["rehash"], "sha256"], json.dumps(digest))
        elif "document" in step or "document_hex" in step:
            data = step["document"].encode() if "document" in step else bytes.fromhex(step["document_hex"])
            manifest.write_bytes(data)
        elif "write" in step:
            target.unlink(missing_ok=True)
            target.write_bytes(bytes.fromhex(step["hex"]) if "hex" in step else step["text"].encode())
        elif "copy" in step or "variant" in step:
            source = bundle / step["copy"] if "copy" in step else generator.VARIANTS / step["variant"]
            (bundle / step["to"]).unlink(missing_ok=True)
            shutil.copyfile(source, bundle / step["to"])
        elif "move" in step:
            (bundle / step["to"]).parent.mkdir(parents=True, exist_ok=True)
            (bundle / step["move"]).rename(bundle / step["to"])
        elif "remove" in step:
            target.unlink()
        elif "mkdir" in step:
            target.mkdir()
        elif "symlink" in step:  # "@outside/x": an absolute link to the folder beside the bundle
            os.symlink(step["to"].replace("@outside", str(bundle.parent / "outside")), target)
        elif "fifo" in step:
            os.mkfifo(target)
        elif step.get("bundle") in ("missing", "file"):
            shutil.rmtree(bundle)
            if step["bundle"] == "file":
                bundle.write_text("not a folder")
        else:
            raise ValueError(f"unknown tampering step {step}")
    if edited:
        text = json.dumps(doc)
        for mark, value in raw.items():
            text = text.replace(mark, value)
        manifest.write_text(text)


def hostile_bundle(row: dict[str, Any], root: Path) -> Path:
    """A copy of the tiny bundle at root/bundle, tampered as ``row`` says; a copy of its files at root/outside where
    the row uses them."""
    bundle = root / "bundle"
    shutil.copytree(generator.BUNDLE, bundle)
    if "outside" in json.dumps(row["tamper"]):
        shutil.copytree(generator.BUNDLE, root / "outside")
    tamper(bundle, row["tamper"])
    return bundle


@pytest.fixture(scope="module")
def good_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "good.png"
    Image.new("RGB", (40, 30), (200, 40, 30)).save(path)
    return path


# -- the tests ---------------------------------------------------------------------------------------------

def test_tiny_bundle_is_what_the_generator_writes_now() -> None:
    stale = [str(path.relative_to(ROOT)) for path, data in generator.outputs().items()
             if not path.is_file() or path.read_bytes() != data]
    assert not stale, f"stale: {stale}; run {generator.COMMAND}"


def test_table_covers_the_contract() -> None:
    """Each kind of hostile manifest the issue names has rows, and no two rows share a name."""
    names = [row["name"] for row in TABLE]
    assert len(set(names)) == len(names)
    hostile = [row for row in TABLE if "message" in row or "contains" in row]
    kinds = {"vocab": "scores 12 tokens", "crop": "preprocess.crop is", "outside": "points outside the bundle",
             "plain name": "must be a plain name inside the bundle", "missing": "is missing", "sha256": "has sha256",
             "version": "format_version:", "float32": "finite in float32", "types": "must be an integer >= 1, got"}
    for kind, words in kinds.items():
        assert sum(words in (row.get("message") or "") for row in hostile) >= 2, kind
    assert len(hostile) >= 150 and sum(row.get("loads", False) for row in TABLE) >= 10


@pytest.mark.parametrize("row", TABLE, ids=[row["name"] for row in TABLE])
def test_python_runtime_answers_as_the_table_says(row: dict[str, Any], tmp_path: Path, good_image: Path) -> None:
    bundle = hostile_bundle(row, tmp_path)
    limits = Limits(**row.get("limits", {}))
    if row.get("loads") or "caption_fails" in row:
        caption = Captioner(bundle, device="cpu", threads=1, limits=limits).caption_batch([good_image])[0]
        if row.get("loads"):
            assert caption.error is None and caption.tokens, caption
        else:
            assert caption.error and row["caption_fails"] in caption.error and "\n" not in caption.error, caption
        return
    with pytest.raises(CapkitError) as caught:
        Captioner(bundle, device="cpu", threads=1, limits=limits)
    message = str(caught.value)
    assert "\n" not in message
    if "message" in row:
        assert message == f"{bundle}: {row['message']}"
    for fragment in row.get("contains", []):
        assert fragment in message


@pytest.mark.slow
@pytest.mark.skipif(NODE is None or not (JS / "node_modules").is_dir(),
                    reason="node or clients/js/node_modules missing (scripts/setup.sh installs them)")
def test_javascript_runtime_and_cli_answer_every_row_as_the_table_says() -> None:
    """Every row through the Node runtime and through its CLI (a process each, under a memory cap): what
    clients/js/tools/hostile-manifests.mjs prints, the JavaScript surface's hostile-suite counts."""
    result = subprocess.run([NODE, str(JS / "tools" / "hostile-manifests.mjs")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "results lost 0" in result.stdout
    print(result.stdout.strip().splitlines()[-1])
