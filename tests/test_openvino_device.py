"""device="openvino": the encoder on ONNX Runtime's OpenVINO execution provider, the step graph on the CPU provider.

Where this ONNX Runtime lacks the provider (onnxruntime-gpu, as in CI), asking for it is one line and a non-zero exit;
where it has it (onnxruntime-openvino installed in place of onnxruntime-gpu), its captions are the CPU provider's.
The bundle is the JavaScript tests' tiny one (clients/js/test/fixtures/tiny-bundle), so no torch is needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from capkit.runtime import Captioner  # noqa: E402
from capkit.runtime.onnx_inference import OnnxInference  # noqa: E402
from capkit.runtime.errors import CapkitError  # noqa: E402
from capkit.runtime.providers import CPU, OPENVINO, RuntimeUnavailableError  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "clients" / "js" / "test" / "fixtures" / "tiny-bundle"
HAS_OPENVINO = OPENVINO in ort.get_available_providers()


def test_openvino_takes_the_encoder_only_with_the_threads_asked() -> None:
    inference = OnnxInference(TINY, device="cpu", threads=3)
    assert inference._providers("openvino", "encoder") == [
        (OPENVINO, {"device_type": "CPU", "precision": "FP32", "num_of_threads": "3"}), CPU]
    assert inference._providers("openvino", "decoder_step") == [CPU]
    assert OnnxInference(TINY, device="cpu")._providers("openvino", "encoder")[0][1] == {
        "device_type": "CPU", "precision": "FP32"}  # no threads asked: OpenVINO's own choice


@pytest.mark.skipif(HAS_OPENVINO, reason="this ONNX Runtime has the OpenVINO provider")
def test_without_the_provider_openvino_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailableError) as refused:
        Captioner(TINY, device="openvino")
    assert "\n" not in str(refused.value) and "no OpenVINO execution provider" in str(refused.value)
    from capkit.cli import main

    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    result = CliRunner().invoke(main, ["caption", "--model", str(TINY), "--device", "openvino", str(image)])
    assert result.exit_code != 0
    assert "device openvino: this ONNX Runtime has no OpenVINO execution provider" in result.output
    assert result.stdout == ""  # nothing on stdout, where captions go


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs onnxruntime-openvino (in place of onnxruntime-gpu)")
def test_openvino_captions_are_the_cpu_providers() -> None:
    cpu = Captioner(TINY, device="cpu", threads=2)
    ov = Captioner(TINY, device="openvino", threads=2)
    assert ov.device == "openvino" and ov.inference._encoder.get_providers()[0] == OPENVINO
    assert ov.inference._decoder.get_providers() == [CPU]
    crop = cpu.spec.crop
    pixels = np.random.default_rng(0).standard_normal((6, 3, crop, crop)).astype(np.float32)
    state_cpu, state_ov = cpu.inference.encode(pixels), ov.inference.encode(pixels)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(state_cpu, state_ov)) < 1e-4  # f32 both: rounding only
    for options in (dict(temperature=0.0), dict(temperature=0.8, seed=7)):
        want = [c.tokens for c in cpu.caption_pixels(pixels, [None] * 6, cpu.options(**options))]
        assert [c.tokens for c in ov.caption_pixels(pixels, [None] * 6, ov.options(**options))] == want


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs onnxruntime-openvino (in place of onnxruntime-gpu)")
def test_openvino_captions_from_many_threads_at_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    captioner = Captioner(TINY, device="openvino", threads=2)
    crop = captioner.spec.crop
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal((1, 3, crop, crop)).astype(np.float32) for _ in range(64)]

    def tokens(i: int) -> list[int]:
        return captioner.caption_pixels(rows[i], [None], captioner.options(temperature=0.9, seed=i))[0].tokens

    alone = [tokens(i) for i in range(len(rows))]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(tokens, range(len(rows)))) == alone


def test_openvino_refuses_io_binding_in_one_line() -> None:
    # onnxruntime-openvino 1.24.1 ended the process (a segmentation fault) on an encoder run with bound outputs
    with pytest.raises(CapkitError, match="^io_binding is not available with device openvino; leave it None or False$"):
        Captioner(TINY, device="openvino", io_binding=True)
