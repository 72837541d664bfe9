"""capkit.serve.service: a request that finds the server idle is captioned on the event loop when its image is small
(INLINE_PIXELS), in a preprocessing thread when it is large or when another request is on its way, and requests
read together never take the loop for themselves; the captions are the Captioner's either way."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
from PIL import Image

from capkit.runtime.captioner import Captioner
from capkit.serve.service import INLINE_PIXELS, CaptionService, Upload
from capkit.serve.settings import ServeSettings


def png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_an_idle_server_captions_a_small_image_on_its_event_loop(export_kit) -> None:
    bundle = export_kit.bundle("lstm").folder
    service = CaptionService(bundle, ServeSettings(), device="cpu", threads=1)
    service.load()
    where: list[str] = []
    real = service.engine.caption_now

    def spy(*args, **kwargs):
        answer = real(*args, **kwargs)
        where.append(threading.current_thread().name + ("" if answer is not None else " (declined)"))
        return answer

    service.engine.caption_now = spy
    small, large = png(120, 90, 1), png(1100, 1000, 2)
    assert 120 * 90 <= INLINE_PIXELS < 1100 * 1000

    async def caption(data: bytes, others: int = 0):
        tickets = [service.take_on() for _ in range(1 + others)]  # others: requests still on their way
        try:
            return (await service.caption([Upload(data, "image.png")], {}, tickets[0]))[0]
        finally:
            for ticket in tickets:
                service.release(ticket)

    async def together(count: int):
        """``count`` requests started in one go, as uvicorn starts those whose bytes arrived together."""
        async def one():
            ticket = service.take_on()
            try:
                return (await service.caption([Upload(small, "image.png")], {}, ticket))[0]
            finally:
                service.release(ticket)

        return await asyncio.gather(*(one() for _ in range(count)))

    async def scenario():
        loop_thread = threading.current_thread().name
        got = [await caption(small), await caption(large), await caption(small, others=1)]
        return loop_thread, got, await together(4)

    try:
        loop_thread, got, batch = asyncio.run(scenario())
    finally:
        service.close()
    # idle and small: on the loop; large: in a preprocessing thread; another request on its way: the engine's batch
    assert where[0] == loop_thread and where[1].startswith("capkit-preprocess") and not where[1].endswith("(declined)")
    assert where[2].startswith("capkit-preprocess") and where[2].endswith("(declined)")
    # four at once: none on the loop (each yields once, so all four are taken on before any looks for an idle server)
    assert len(where) == 7 and not any(name.startswith(loop_thread) for name in where[3:])
    expected = Captioner(bundle, device="cpu", threads=1)
    for answer, data in zip(got + batch, (small, large, small, small, small, small, small)):
        assert answer.ok and answer.tokens == expected.caption(data).tokens
