"""Each decoding option is defined once, as a field of DecodingOptions: the CLI group, the Python API's
overrides, the checks and the manifest's decoding block derive from the fields (the JavaScript side is
tested against them in test_js_constants.py)."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from capkit.cli import main
from capkit.cli.options import pop_decoding
from capkit.runtime.decoding import (OPTION_NAMES, DecodingOptions, DecodingOptionsError, verify_options,
                                     with_overrides)

FIELDS = dataclasses.fields(DecodingOptions)


def test_every_field_declares_its_flag_kind_and_help() -> None:
    assert OPTION_NAMES == tuple(f.name for f in FIELDS)
    for f in FIELDS:
        assert f.metadata["flag"].startswith("--") and f.metadata["kind"] in (int, float) and f.metadata["help"]


@pytest.mark.parametrize("command", ["caption", "eval"])
def test_the_cli_group_is_the_fields(command: str) -> None:
    text = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
    for f in FIELDS:
        assert f.metadata["flag"] in text, (command, f.name)
    given = {name: None for name in OPTION_NAMES}
    assert pop_decoding({**given, "other": 1}) == given


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_each_field_is_checked_by_its_declared_range(f: dataclasses.Field) -> None:
    spec, label = f.metadata, f.name.replace("_", "-")
    bad = []
    if spec["minimum"] is not None:
        bad.append(spec["minimum"] - 1)
    if spec["maximum"] is not None:
        bad += [spec["maximum"] + 0.5, spec["above"]]
    bad += ["1", True] + ([1.5] if spec["kind"] is int else [])
    for value in bad:
        with pytest.raises(DecodingOptionsError, match=f"^{label} must be"):
            verify_options(dataclasses.replace(DecodingOptions(), **{f.name: value}))
    if f.default is None:
        assert getattr(verify_options(DecodingOptions()), f.name) is None


def test_limits_come_from_the_fields() -> None:
    from capkit.runtime.limits import LimitError, Limits

    for f in FIELDS:
        if f.metadata["limit"] is not None:
            small = Limits(**{f.metadata["limit"]: 3})
            with pytest.raises(LimitError, match=f"Limits.{f.metadata['limit']}"):
                verify_options(dataclasses.replace(DecodingOptions(), **{f.name: 4}), small)


def test_overrides_are_the_field_names() -> None:
    base = DecodingOptions(beam=4)
    assert with_overrides(base, {"temperature": 0.5}) == DecodingOptions(temperature=0.5)  # sampling replaces beam
    assert with_overrides(base, {"max_length": 7, "seed": None}) == DecodingOptions(beam=4, max_length=7)
    with pytest.raises(TypeError, match="unknown decoding option 'temp'"):
        with_overrides(base, {"temp": 0.5})


def test_is_int_takes_integers_of_python_and_numpy_but_no_bool():
    import numpy as np

    from capkit.runtime.errors import is_int

    assert [is_int(v) for v in (3, np.int64(3), np.uint8(3))] == [True, True, True]
    assert [is_int(v) for v in (True, np.bool_(True), 3.0, "3", None)] == [False] * 5
