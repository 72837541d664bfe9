"""Writes what the JavaScript runtime takes from the Python runtime, so that each fact is defined once, in
Python (capkit.runtime), and the JavaScript side derives it:

- clients/js/src/constants.generated.js: the decoding options (names, kinds, defaults), the limits, the
  special tokens and the manifest's schema constants;
- clients/js/test/fixtures/option_checks.json: the shared table of option sets that both
  ``verify_options`` and JavaScript's ``verifyOptions`` check; the table's ``options`` are edited by hand,
  this fills in what Python answers for each (``python``).

    python clients/js/tools/generate_constants.py          # rewrites both files
    python clients/js/tools/generate_constants.py --check  # exit 1 when a committed file is stale

tests/test_js_constants.py fails when a committed file differs from what this writes now.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]  # the repository root, i.e. the capkit package
if ROOT.name == "capkit" and str(ROOT.parent) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT.parent))  # this checkout's capkit, not another one installed

from capkit.runtime import decoding, manifest, vocab  # noqa: E402
from capkit.runtime.errors import CapkitError  # noqa: E402
from capkit.runtime.limits import DEFAULT_LIMITS  # noqa: E402
from capkit.runtime.preprocess import INTERPOLATIONS, PreprocessSpec  # noqa: E402

CONSTANTS_FILE = ROOT / "clients" / "js" / "src" / "constants.generated.js"
OPTION_TABLE = ROOT / "clients" / "js" / "test" / "fixtures" / "option_checks.json"
COMMAND = "python clients/js/tools/generate_constants.py"
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


KINDS = {int: "integer", float: "number"}  # a DecodingOptions field's declared kind, in JavaScript's words


def option_field(f: dataclasses.Field) -> dict[str, Any]:
    """What verify_options checks of one DecodingOptions field, as its ``option(...)`` declares it."""
    spec = f.metadata
    return {"kind": KINDS[spec["kind"]], "optional": f.default is None,
            **{key: spec[key] for key in ("minimum", "above", "maximum", "limit")}}


def constants() -> dict[str, tuple[str, Any]]:
    """Each exported name -> (its comment, its value), in the order written."""
    options = dataclasses.fields(decoding.DecodingOptions)
    return {
        "DEFAULT_OPTIONS": ("DecodingOptions(): every option and its default (runtime/decoding.py)",
                            {f.name: f.default for f in options}),
        "OPTION_CHECKS": ("each option's declared check, in DecodingOptions' order (runtime/decoding.py option()): "
                          "kind, null allowed, range minimum <= v or above < v <= maximum, the Limits field",
                          {f.name: option_field(f) for f in options}),
        "DEFAULT_LIMITS": ("Limits(): every limit and its default (runtime/limits.py)",
                           dataclasses.asdict(DEFAULT_LIMITS)),
        "SPECIAL_TOKENS": ("the first words of every vocabulary, in id order (runtime/vocab.py)",
                           list(vocab.SPECIAL_TOKENS)),
        "SPECIAL_TOKEN_IDS": ("a manifest's special_tokens: each one's id (Vocabulary.special_token_ids)",
                              vocab.Vocabulary(vocab.SPECIAL_TOKENS).special_token_ids()),
        "FORMAT_VERSION": ("the manifest's format_version that this runtime reads (runtime/manifest.py)",
                           manifest.FORMAT_VERSION),
        "MANIFEST_NAME": ("the manifest's file name in a bundle", manifest.MANIFEST_NAME),
        "MAX_MANIFEST_DEPTH": ("most nesting of arrays and objects in a manifest", manifest.MAX_MANIFEST_DEPTH),
        "PRECISIONS": ("a manifest's precision values", list(manifest.MANIFEST_PRECISIONS)),
        "GRAPH_FORMATS": ("a manifest's graph_format values", list(manifest.GRAPH_FORMATS)),
        "RECURRENT_CELLS": ("a manifest's cell values", list(manifest.RECURRENT_CELLS)),
        "DECODING_FIELDS": ("a manifest's decoding keys (max_length is top level)", list(manifest.DECODING_FIELDS)),
        "LEGACY_DECODING_KEYS": ("decoding keys of older exports -> the option they mean (null: ignored)",
                                 dict(manifest.LEGACY_DECODING_KEYS)),
        "PREPROCESS_KEYS": ("a manifest's preprocess keys; all but the last are required (PreprocessSpec.KEYS)",
                            list(PreprocessSpec.KEYS)),
        "INTERPOLATIONS": ("a manifest's preprocess.interpolation values (runtime/preprocess.py)",
                           list(INTERPOLATIONS)),
        "DEFAULT_INTERPOLATION": ("preprocess.interpolation when a manifest leaves it out",
                                  PreprocessSpec.interpolation),
    }


def js_value(value: Any, indent: str = "") -> str:
    """A JSON-like value as a JavaScript literal: objects and arrays frozen, an object one key a line."""
    if isinstance(value, dict):
        inner = indent + "  "
        keys = [k if _IDENTIFIER.fullmatch(k) else json.dumps(k) for k in value]
        lines = [f"{inner}{k}: {js_value(v, inner)}," for k, v in zip(keys, value.values())]
        return "Object.freeze({\n" + "\n".join(lines) + f"\n{indent}}})"
    if isinstance(value, list):
        return "Object.freeze([" + ", ".join(js_value(v, indent) for v in value) + "])"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # one number type in JavaScript: 0.0 is 0
    text = json.dumps(value, allow_nan=False)
    if isinstance(value, str) and "'" not in value and "\\" not in text:
        text = f"'{text[1:-1]}'"  # the project's JavaScript quotes strings with '
    return text


def render_constants() -> str:
    """The text of constants.generated.js."""
    lines = [f"// Generated by `{COMMAND}` from the Python runtime (capkit.runtime): do not edit;",
             "// change the Python definition and run that command again (tests/test_js_constants.py checks it).", ""]
    for name, (comment, value) in constants().items():
        lines += [f"/** {comment} */", f"export const {name} = {js_value(value)};", ""]
    return "\n".join(lines[:-1]) + "\n"


def python_answer(given: dict[str, Any]) -> dict[str, Any]:
    """What ``verify_options`` says of the defaults with ``given`` set: the checked options, or the error."""
    try:
        checked = decoding.verify_options(dataclasses.replace(decoding.DecodingOptions(), **given))
    except CapkitError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"accepted": dataclasses.asdict(checked)}


def render_option_table(cases: list[dict[str, Any]]) -> str:
    """The table with Python's answer to each case's options, one case a line."""
    rows = [json.dumps({"options": case["options"], "python": python_answer(case["options"])}, allow_nan=False)
            for case in cases]
    return "[\n" + ",\n".join(rows) + "\n]\n"


def outputs() -> dict[Path, str]:
    """Each generated file and the text it should hold now."""
    cases = json.loads(OPTION_TABLE.read_text())
    return {CONSTANTS_FILE: render_constants(), OPTION_TABLE: render_option_table(cases)}


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    stale = [path for path, text in outputs().items() if not path.is_file() or path.read_text() != text]
    if check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}{'' if path in stale else ' (unchanged)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
