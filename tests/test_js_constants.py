"""What the JavaScript runtime (clients/js) takes from the Python runtime stays what Python says now.

clients/js/tools/generate_constants.py writes the option names, kinds and defaults, the limits, the
special tokens and the manifest's constants into clients/js/src/constants.generated.js, and Python's
answers into the shared option table (clients/js/test/fixtures/option_checks.json). These tests fail when
a committed file is stale, and when JavaScript's verifyOptions answers an option set of the table
otherwise than Python's verify_options does now (accepted or refused, the error's class and its line).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "clients" / "js"
NODE = shutil.which("node")
_spec = importlib.util.spec_from_file_location("generate_constants", JS / "tools" / "generate_constants.py")
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)


def test_constants_file_is_what_the_generator_writes_now() -> None:
    assert generator.CONSTANTS_FILE.read_text() == generator.render_constants(), \
        f"clients/js/src/constants.generated.js is stale: run {generator.COMMAND}"


def test_constants_hold_pythons_option_defaults_and_limits() -> None:
    """The generated file names every DecodingOptions field with its default and every Limits field."""
    import dataclasses

    from capkit.runtime.decoding import DecodingOptions
    from capkit.runtime.limits import Limits

    text = generator.CONSTANTS_FILE.read_text()
    for f in dataclasses.fields(DecodingOptions):
        assert f"  {f.name}: {generator.js_value(f.default)},\n" in text, f.name
    for f in dataclasses.fields(Limits):
        assert f"  {f.name}: {generator.js_value(f.default)},\n" in text, f.name


def test_option_table_holds_pythons_answers_now() -> None:
    cases = json.loads(generator.OPTION_TABLE.read_text())
    assert generator.OPTION_TABLE.read_text() == generator.render_option_table(cases), \
        f"clients/js/test/fixtures/option_checks.json is stale: run {generator.COMMAND}"
    answers = [case["python"] for case in cases]
    assert any("accepted" in a for a in answers) and sum("error" in a for a in answers) >= 20


def as_javascript_reads_it(value: Any) -> Any:
    """A JSON value as JavaScript's JSON.parse sees it: an integer beyond 2**53 is the nearest double."""
    if isinstance(value, dict):
        return {k: as_javascript_reads_it(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return float(value)
    return value


@pytest.mark.skipif(NODE is None or not (JS / "node_modules").is_dir(),
                    reason="node or clients/js/node_modules missing (scripts/setup.sh installs them)")
def test_javascript_checks_every_option_set_as_python_does_now() -> None:
    cases = json.loads(generator.OPTION_TABLE.read_text())
    result = subprocess.run([NODE, str(JS / "tools" / "option-checks.mjs")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    javascript = json.loads(result.stdout)
    assert len(javascript) == len(cases)
    for case, found in zip(cases, javascript):
        python = as_javascript_reads_it(generator.python_answer(case["options"]))
        assert as_javascript_reads_it(found) == python, case["options"]
