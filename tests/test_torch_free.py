"""The rule: capkit.runtime and `capkit caption` never import torch, torchvision or onnx.

Each check runs in a fresh interpreter (this one has torch loaded) and lists the forbidden
modules found in ``sys.modules`` afterwards. The stronger check, a venv where they are not even
installed, is scripts/runtime_only_check.sh (run here when CAPKIT_RUNTIME_ONLY_CHECK=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torchvision", "onnx", "onnxscript")
REPORT = textwrap.dedent("""
    import json, sys
    print("FORBIDDEN=" + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(%r))))
""" % (FORBIDDEN,))


def forbidden_after(code: str) -> tuple[list[str], subprocess.CompletedProcess]:
    """Runs ``code`` in a new interpreter; returns the forbidden top-level modules it left loaded."""
    script = textwrap.dedent(code) + REPORT
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FORBIDDEN=")]
    assert lines, f"the check did not finish (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1].split("=", 1)[1]), proc


@pytest.fixture(scope="module")
def bundle_and_image(tmp_path_factory) -> tuple[Path, Path]:
    torch = pytest.importorskip("torch")
    from capkit.export import export_model
    from capkit.models import CaptionModel, CaptionModelConfig

    torch.manual_seed(0)
    vocab = Vocabulary(SPECIAL_TOKENS + ("a", "red", "square", "on", "white"))
    model = CaptionModel(CaptionModelConfig(vocab_size=len(vocab), encoder="resnet18", embed_dim=8, hidden_dim=16))
    folder = tmp_path_factory.mktemp("bundle")
    export_model(model.eval(), vocab, PreprocessSpec(resize=32, crop=32), 6, folder)
    image = folder.parent / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    return folder, image


@pytest.mark.parametrize("statement", ["import capkit.runtime", "import capkit.cli.caption", "import capkit.cli",
                                       "import capkit; capkit.Captioner",
                                       "import capkit.runtime.onnx_inference"])
def test_imports_are_torch_free(statement: str) -> None:
    loaded, proc = forbidden_after(statement)
    assert proc.returncode == 0, proc.stderr
    assert loaded == [], f"`{statement}` imports {loaded}"


@pytest.mark.slow  # exports a bundle, then captions in a fresh interpreter (the imports are checked fast above)
def test_captioning_is_torch_free(bundle_and_image) -> None:
    bundle, image = bundle_and_image
    loaded, proc = forbidden_after(f"""
        from capkit.runtime import Captioner
        caption = Captioner({str(bundle)!r}, device="cpu").caption({str(image)!r}, temperature=0.5, seed=1)
        assert caption.ok and caption.tokens, caption
        from capkit.cli import main
        main(["caption", {str(image)!r}, {str(image)!r}, "--model", {str(bundle)!r}, "--json", "--beam", "2"],
             standalone_mode=False)
        main(["caption", {str(image)!r}, "--temp", "0.7", "--top-p", "0.9", "--seed", "3"],
             standalone_mode=False)  # the bundle from $CAPKIT_MODEL
    """)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and all("caption" in row for row in rows), proc.stdout
    assert loaded == [], f"captioning imported {loaded}"


@pytest.fixture(autouse=True)
def _model_env(monkeypatch: pytest.MonkeyPatch, request) -> None:
    if "bundle_and_image" in request.fixturenames:
        monkeypatch.setenv("CAPKIT_MODEL", str(request.getfixturevalue("bundle_and_image")[0]))


@pytest.mark.slow  # imports torch in a fresh interpreter: 2-3 s
def test_a_torch_import_would_be_seen() -> None:
    """The check itself can fail."""
    pytest.importorskip("torch")
    loaded, _ = forbidden_after("import capkit.runtime, torch")
    assert loaded == ["torch"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CAPKIT_RUNTIME_ONLY_CHECK") != "1",
                    reason="builds a fresh venv (15-30 s with a local pip cache); set CAPKIT_RUNTIME_ONLY_CHECK=1")
def test_runtime_only_venv(bundle_and_image) -> None:
    bundle, image = bundle_and_image
    proc = subprocess.run([str(REPO / "scripts" / "runtime_only_check.sh"), str(bundle), str(image)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "caption" in json.loads(proc.stdout.strip().splitlines()[-1])
