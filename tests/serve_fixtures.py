"""Fixtures of the ``capkit serve`` tests (test_serve.py, test_serve_load.py), imported by name into each module:
the kit's LSTM bundle, photos to caption, and one server per module on a free loopback port."""

from __future__ import annotations

from pathlib import Path

import pytest

import hostile_serve as hostile  # tests/ is on sys.path: conftest


@pytest.fixture(scope="module")
def bundle(export_kit) -> Path:
    return export_kit.bundle("lstm").folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return hostile.write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """The server with its defaults; its stderr must hold no traceback when the module is done."""
    with hostile.ServeProcess(bundle, log=tmp_path_factory.mktemp("log") / "stderr.txt") as process:
        yield process
        assert "Traceback" not in process.stderr()
