"""Hostile inputs for two surfaces besides ``capkit caption``: the dataset readers (COCO, Karpathy, JSONL, CSV
and Flickr files, :mod:`capkit.training.datasets`) and the Python API (:class:`capkit.runtime.Captioner`).

Used by tests/test_hostile_readers.py and tests/test_hostile_api.py, and runnable on its own for the README's
reliability counts (each surface runs in one child process under hostile_corpus's memory limit and timeout):

    .venv/bin/python tests/hostile_readers.py            # both surfaces (the API's builds a tiny bundle: torch)
    .venv/bin/python tests/hostile_readers.py readers    # the dataset readers only (no torch)

A case holds when nothing is printed on stderr (no numpy, torch or Pillow warning; capkit's own warning
that missing images are left out only where a case expects it) and:
- a hostile input raises the documented error, with a one-line message naming it: a DatasetError naming the
  file and the entry (``images[1]``, ``:2:``, an id); in the API a CapkitError for bad data (an image, an
  option's value) and a TypeError for an argument of the wrong type. Never another exception;
- a legal input gives all its results: every record of a dataset, a caption for an odd but valid image;
- where good images stand beside a bad one (a batch), each still gets the caption it gets alone; a missing or
  different one is a result lost.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

ALLOWED_WARNING = "do not exist and are left out"  # capkit's own warning (drop_missing), where a case expects it
CHILD_TIMEOUT_S = 300.0


@dataclass
class Result:
    name: str
    hostile: bool
    message: str = ""  # the error a hostile case got, or what a legal one produced
    problems: list[str] = field(default_factory=list)
    lost: bool = False  # a good result (a record, a good image's caption) is missing or different


@contextlib.contextmanager
def watched(allowed: str = "") -> Iterator[list[str]]:
    """Collects, into the list it yields (filled on exit), what the block printed on stderr (file descriptor 2,
    so C libraries too) and every warning it raised, each as a line; a warning containing ``allowed`` is left out."""
    found: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the default shows a warning once per place: each case must show its own
        os.dup2(sink.fileno(), 2)
        try:
            yield found
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            found += [line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip()]
            found += [f"{w.category.__name__}: {w.message}" for w in caught if not (allowed and allowed in str(w.message))]


def one_line_problems(message: str, words: tuple[str, ...] = ()) -> list[str]:
    problems = [] if message.strip() and "\n" not in message and "\r" not in message else [f"not one line: {message!r:.200}"]
    return problems + [f"does not name {w!r}: {message[:200]!r}" for w in words if w not in message]


# -- the dataset readers --------------------------------------------------------------------------------------------
@dataclass
class ReaderCase:
    name: str
    source: str  # relative to the corpus folder
    words: tuple[str, ...] = ()  # hostile: what the one-line error must name besides the file
    loads: Optional[tuple[int, int]] = None  # legal: the (images, captions) it must load; None: hostile
    warns: str = ""  # the capkit warning the case may give
    at_fault: str = ""  # the file the error must name, when not the source (a split file beside it)

    @property
    def hostile(self) -> bool:
        return self.loads is None


IMAGE_NAMES = ("a.png", "b.png", "c.png")
CAPTIONS = ("a red square", "a blue circle", "a green star")
COCO = {"images": [{"id": i + 1, "file_name": n} for i, n in enumerate(IMAGE_NAMES)],
        "annotations": [{"image_id": i + 1, "caption": c} for i, c in enumerate(CAPTIONS)]}
KARPATHY = {"images": [{"filename": n, "split": s, "cocoid": i + 1, "sentences": [{"raw": c}]}
                       for i, (n, s, c) in enumerate(zip(IMAGE_NAMES, ("train", "val", "test"), CAPTIONS))]}
DEEP = 100_000  # brackets: deeper than any recursion limit


def _images(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in zip(IMAGE_NAMES, ((200, 30, 30), (30, 30, 200), (30, 200, 30))):
        Image.new("RGB", (4, 4), colour).save(folder / name)
    return folder


def _edited(base: dict, key: str, index: int, **changes: Any) -> dict:
    """A deep copy of ``base`` with ``base[key][index]`` updated by ``changes`` (a value of ``...``: key removed)."""
    doc = copy.deepcopy(base)
    doc[key][index].update(changes)
    doc[key][index] = {k: v for k, v in doc[key][index].items() if v is not ...}
    return doc


def _coco_cases(folder: Path) -> list[ReaderCase]:
    _images(folder / "images")
    image, note = (lambda **c: _edited(COCO, "images", 1, **c)), (lambda **c: _edited(COCO, "annotations", 1, **c))
    hostile = {
        "id a list": image(id=[2]), "id an object": image(id={"n": 2}), "id NaN": image(id=float("nan")),
        "id Infinity": image(id=float("inf")), "id 1.5": image(id=1.5), "id true": image(id=True),
        "id null": image(id=None), "id empty": image(id=""), "id 10**30": image(id=10 ** 30),
        "ids of mixed types": image(id="2"), "duplicate ids": image(id=1), "no id": image(id=...),
        "file_name a list": image(file_name=["b.png"]), "file_name a number": image(file_name=7),
        "file_name empty": image(file_name=""), "image entry a string": {**COCO, "images": [*COCO["images"][:1], "b.png"]},
        "caption a number": note(caption=5), "caption a list": note(caption=["a", "b"]), "caption null": note(caption=None),
        "caption NaN": note(caption=float("nan")), "image_id a list": note(image_id=[2]),
        "image_id an object": note(image_id={"id": 2}), "image_id NaN": note(image_id=float("nan")),
        "image_id of the other type": note(image_id="2"), "image_id unknown": note(image_id=99),
        "images an object": {**COCO, "images": {"1": "a.png"}},
    }
    words = {"caption": "annotations[1]", "image_id": "annotations[1]", "images an": "not a COCO captions file"}
    cases = []
    for name, doc in hostile.items():
        (folder / f"{name}.json").write_text(json.dumps(doc))
        cases.append(ReaderCase(f"coco {name}", f"coco/{name}.json",
                                (next((w for k, w in words.items() if name.startswith(k)), "images[1]"),)))
    texts = {"an id of 5000 digits": json.dumps(COCO).replace('"id": 2', '"id": ' + "9" * 5000, 1),
             "nested 100000 deep": "[" * DEEP + "]" * DEEP,
             "nested in images": json.dumps({**COCO, "images": "HOLE"}).replace('"HOLE"', "[" * DEEP + "]" * DEEP),
             "a JSON array": "[1, 2]", "a JSON string": '"captions"', "null": "null", "truncated": json.dumps(COCO)[:40]}
    words.update({"an id": "digits", "nested": "nested too deeply", "a JSON": "neither a COCO", "null": "neither a COCO",
                  "truncated": "not valid JSON"})
    for name, text in texts.items():
        (folder / f"{name}.json").write_text(text)
        cases.append(ReaderCase(f"coco {name}", f"coco/{name}.json", (next(w for k, w in words.items() if name.startswith(k)),)))
    legal = {"plain": json.dumps(COCO), "with a BOM": "\ufeff" + json.dumps(COCO),
             "string ids": json.dumps({"images": [{**e, "id": f"im{e['id']}"} for e in COCO["images"]],
                                       "annotations": [{**a, "image_id": f"im{a['image_id']}"} for a in COCO["annotations"]]}),
             "64-bit ids": json.dumps(COCO).replace('"id": 1', f'"id": {2 ** 63 - 1}').replace('"image_id": 1', f'"image_id": {2 ** 63 - 1}'),
             "nested 200 deep in info": json.dumps({**COCO, "info": "HOLE"}).replace('"HOLE"', "[" * 200 + "]" * 200)}
    for name, text in legal.items():
        (folder / f"legal {name}.json").write_text(text, encoding="utf-8")
        cases.append(ReaderCase(f"coco legal: {name}", f"coco/legal {name}.json", loads=(3, 3)))
    (folder / "legal a name too long.json").write_text(json.dumps(image(file_name="b" * 5000 + ".png")))
    cases.append(ReaderCase("coco legal: a file name too long (left out as missing)", "coco/legal a name too long.json",
                            loads=(2, 2), warns=ALLOWED_WARNING))
    return cases


def _karpathy_cases(folder: Path) -> list[ReaderCase]:
    _images(folder / "images")
    entry = lambda **c: _edited(KARPATHY, "images", 1, **c)  # noqa: E731
    hostile = {"cocoid a list": entry(cocoid=[2]), "cocoid NaN": entry(cocoid=float("nan")),
               "cocoid true": entry(cocoid=True), "two files, one cocoid": entry(cocoid=1),
               "filepath a list": entry(filepath=["x"]), "filepath a number": entry(filepath=5),
               "tokens with a number": entry(sentences=[{"tokens": ["a", 5]}]), "sentence a string": entry(sentences=["a"]),
               "split a list": entry(split=["val"]), "filename empty": entry(filename="")}
    words = {"two files": "names two files", "split": "unknown split"}
    cases = []
    for name, doc in hostile.items():
        (folder / f"{name}.json").write_text(json.dumps(doc))
        cases.append(ReaderCase(f"karpathy {name}", f"karpathy/{name}.json",
                                (next((w for k, w in words.items() if name.startswith(k)), "images[1]"),)))
    (folder / "legal.json").write_text(json.dumps(entry(sentences=[{"tokens": ["a", "blue", "circle"]}])))
    return cases + [ReaderCase("karpathy legal: tokens only", "karpathy/legal.json", loads=(3, 3))]


def _line_cases(folder: Path) -> list[ReaderCase]:
    """JSONL and CSV: the second line is the hostile one."""
    _images(folder)
    first = json.dumps({"image": "a.png", "caption": CAPTIONS[0]})
    lines = {"image_id a list": {"image": "b.png", "caption": "x", "image_id": [2]},
             "image_id an object": {"image": "b.png", "caption": "x", "image_id": {"a": 1}},
             "image_id NaN": {"image": "b.png", "caption": "x", "image_id": float("nan")},
             "image_id true": {"image": "b.png", "caption": "x", "image_id": True},
             "two files, one image_id": {"image": "b.png", "caption": "x", "image_id": "a.png"},
             "image empty": {"image": "", "caption": "x"}, "image ~nobody": {"image": "~no-such-user-capkit/b.png", "caption": "x"},
             "captions numbers": {"image": "b.png", "captions": [1, 2]}, "split a list": {"image": "b.png", "caption": "x", "split": ["val"]}}
    texts = {name: json.dumps(line) for name, line in lines.items()}
    texts.update({"nested 100000 deep": "[" * DEEP + "]" * DEEP, "an int of 5000 digits": '{"image": "b.png", "caption": "x", "image_id": ' + "7" * 5000 + "}"})
    words = {"split": "unknown split", "nested": "nested too deeply", "an int": "digits"}
    cases = []
    for name, text in texts.items():
        (folder / f"{name}.jsonl").write_text(first + "\n" + text + "\n")
        named = ("names two files", "'a.png'") if name.startswith("two files") else \
            (":2:", *(w for k, w in words.items() if name.startswith(k)))  # one id on two lines: named by the id
        cases.append(ReaderCase(f"jsonl {name}", f"lines/{name}.jsonl", named))
    (folder / "two files one id.csv").write_text("image,caption,image_id\na.png,a red square,x\nb.png,a blue circle,x\n")
    (folder / "a NUL.csv").write_text("image,caption\na.png,a red\x00 square\n")
    (folder / "a huge field.csv").write_text("image,caption\na.png,\"" + "w" * 200_000 + "\"\n")
    cases += [ReaderCase("csv two files, one image_id", "lines/two files one id.csv", ("names two files",)),
              ReaderCase("csv a 200 KB field", "lines/a huge field.csv", ("malformed CSV",)),
              ReaderCase("csv legal: a NUL in a caption", "lines/a NUL.csv", loads=(1, 1))]
    legal = [{"image": "a.png", "caption": CAPTIONS[0], "image_id": None}, {"image": "b.png", "captions": list(CAPTIONS[1:])},
             {"image": "c.png", "caption": "a green star, ✓"}]
    (folder / "legal.jsonl").write_text("\n".join(map(json.dumps, legal)) + "\n", encoding="utf-8")
    (folder / "legal.csv").write_text("image,caption\n" + "".join(f"{n},{c}\n" for n, c in zip(IMAGE_NAMES, CAPTIONS)))
    return cases + [ReaderCase("jsonl legal: null id, a captions list", "lines/legal.jsonl", loads=(3, 4)),
                    ReaderCase("csv legal", "lines/legal.csv", loads=(3, 3))]


def _file_cases(root: Path) -> list[ReaderCase]:
    """Sources that are not files to read: FIFOs, a folder where a split file goes, odd names."""
    cases = []
    token = "".join(f"{n}#0\t{c}\n" for n, c in zip(IMAGE_NAMES, CAPTIONS))
    for kind in ("folder", "fifo", "plain"):
        folder = root / f"flickr-{kind}"
        _images(folder / "images")
        (folder / "Flickr8k.token.txt").write_text(token)
        split_file = folder / "Flickr_8k.trainImages.txt"
        if kind == "folder":
            split_file.mkdir()
        elif kind == "fifo" and hasattr(os, "mkfifo"):
            os.mkfifo(split_file)
        elif kind == "plain":
            split_file.write_text("\n".join(IMAGE_NAMES) + "\n")
        else:
            continue
        cases.append(ReaderCase(f"flickr split file {'is a ' + kind if kind != 'plain' else 'legal'}",
                                f"flickr-{kind}/Flickr8k.token.txt", at_fault=split_file.name,
                                **({"loads": (3, 3)} if kind == "plain" else {"words": ("not a regular file",)})))
    if hasattr(os, "mkfifo"):
        for name in ("fifo.json", "fifo-data"):
            os.mkfifo(root / name)
            cases.append(ReaderCase(f"source a FIFO ({name})", name, ("not a regular file (a FIFO)",)))
    cases.append(ReaderCase("source name too long", "d" * 5000 + ".json", ("cannot read",)))
    cases.append(ReaderCase("source ~nobody", "~no-such-user-capkit/data.json", ("no such file",)))
    return cases


def reader_cases(root: Path) -> list[ReaderCase]:
    """Writes the corpus into ``root`` (its folders coco/, karpathy/, lines/, flickr-*/); its cases."""
    return [*_coco_cases(root / "coco"), *_karpathy_cases(root / "karpathy"), *_line_cases(root / "lines"),
            *_file_cases(root)]


def try_reader(case: ReaderCase, root: Path) -> Result:
    from capkit.training.datasets import DatasetError, load_dataset

    result, error, splits = Result(case.name, case.hostile), None, None
    source = case.source if case.source.startswith("~") else str(root / case.source)
    with watched(case.warns) as printed:
        try:
            splits = load_dataset(source)
        except Exception as e:  # judged below: only a DatasetError is a clean refusal
            error = e
    result.problems += [f"printed on stderr: {line[:200]}" for line in printed]
    if error is not None:
        result.message = f"{type(error).__name__}: {error}"[:300]
        if not isinstance(error, DatasetError):
            result.problems.append(f"raised {type(error).__name__}, not a DatasetError: {str(error)[:200]}")
        result.problems += one_line_problems(str(error), (case.at_fault or Path(case.source).name[:100], *case.words))
        if not case.hostile:
            result.problems.append("refused a legal dataset")
            result.lost = True
        return result
    records = [r for split in splits.values() for r in split]
    got = (len(records), sum(len(r.captions) for r in records))
    result.message = f"{got[0]} images, {got[1]} captions"
    if case.hostile:
        result.problems.append("accepted a hostile dataset")
    elif got != case.loads:
        result.problems.append(f"loaded {got}, expected {case.loads} (images, captions)")
        result.lost = True
    return result


# -- the Python API ------------------------------------------------------------------------------------------------
@dataclass
class ApiContext:
    captioner: Any
    good: list[Any]  # two good images
    alone: list[Any]  # their captions, each captioned alone
    folder: Path
    opened: list[Any] = field(default_factory=list)  # file objects a case opened, closed after it


@dataclass
class ApiCase:
    name: str
    kind: str  # item | image | argument | option | legal option | source | pixels
    make: Callable[[ApiContext], Any]  # the input: an image source, a call, an options dict ...
    words: tuple[str, ...] = ()

    @property
    def hostile(self) -> bool:
        return self.kind not in ("image", "legal option")


def _closed_image(ctx: ApiContext, lazy: bool) -> Any:
    from PIL import Image

    img = Image.open(ctx.good[0])
    if not lazy:
        img.load()
    img.close()
    return img


def _odd_mode(mode: str) -> Callable[[ApiContext], Any]:
    def make(ctx: ApiContext) -> Any:
        from PIL import Image

        img = Image.new(mode, (40, 30))
        if mode == "P":
            img.info["transparency"] = 0
        return img
    return make


class BrokenPath(os.PathLike):
    def __fspath__(self) -> str:
        raise RuntimeError("this path cannot be named")


def _file_object(ctx: ApiContext) -> Any:
    f = open(ctx.good[0], "rb")
    ctx.opened.append(f)
    return f


def api_cases() -> list[ApiCase]:
    import numpy as np

    from capkit.runtime import Captioner, DecodingOptions

    arrays = {"0-size": np.zeros((0, 5, 3), np.uint8), "5-D": np.zeros((2, 2, 2, 2, 3), np.uint8),
              "object dtype": np.array([[None, 1]], dtype=object), "bool": np.ones((8, 8, 3), bool),
              "float NaN": np.full((8, 8, 3), np.nan), "float inf": np.full((8, 8, 3), np.inf, np.float32),
              "int64": np.zeros((8, 8, 3), np.int64), "HxWx1": np.zeros((8, 8, 1), np.uint8),
              "HxWx2": np.zeros((8, 8, 2), np.uint8), "0-d": np.array(3, np.uint8),
              "strided 10^10 pixels": np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (100_000, 100_000, 3), (0, 0, 1))}
    items: dict[str, Callable[[ApiContext], Any]] = {f"array {k}": (lambda ctx, a=a: a) for k, a in arrays.items()}
    items.update({
        "closed Pillow image": lambda ctx: _closed_image(ctx, lazy=False),
        "closed lazy Pillow image": lambda ctx: _closed_image(ctx, lazy=True),
        "empty Pillow image": lambda ctx: __import__("PIL.Image").Image.new("RGB", (0, 0)),
        "junk bytes": lambda ctx: b"\x00" * 100, "empty bytes": lambda ctx: b"",
        "junk bytearray": lambda ctx: bytearray(b"GIF89a" + bytes(50)), "junk memoryview": lambda ctx: memoryview(b"\x89PNG" + bytes(40)),
        "path to a text file": lambda ctx: ctx.folder / "text.png", "path to a folder": lambda ctx: ctx.folder,
        "missing path": lambda ctx: ctx.folder / "missing.png", "path with a NUL": lambda ctx: "a\x00b.png",
        "file object": _file_object, "BytesIO": lambda ctx: io.BytesIO(Path(ctx.good[0]).read_bytes()),
        "None": lambda ctx: None, "int": lambda ctx: 7, "dict": lambda ctx: {"image": "a.png"},
        "BrokenPath": lambda ctx: BrokenPath(),
    })
    cases = [ApiCase(name, "item", make) for name, make in items.items()]
    cases += [ApiCase(f"Pillow mode {m}", "image", _odd_mode(m)) for m in
              ("1", "L", "LA", "La", "P", "PA", "I", "I;16", "I;16B", "F", "CMYK", "YCbCr", "LAB", "HSV", "RGBa", "RGBX")]
    cases += [ApiCase("array HxW", "image", lambda ctx: np.full((9, 7), 90, np.uint8)),
              ApiCase("array HxWx4", "image", lambda ctx: np.full((9, 7, 4), 90, np.uint8)),
              ApiCase("array not contiguous", "image", lambda ctx: np.full((20, 20, 3), 90, np.uint8)[::2, ::-1]),
              ApiCase("bytes of a PNG", "image", lambda ctx: Path(ctx.good[1]).read_bytes())]
    arguments: dict[str, tuple[Callable[[ApiContext], Any], str]] = {
        "Captioner(limits='big')": (lambda ctx: Captioner(ctx.folder / "nowhere", limits="big"), "limits"),
        "Captioner(limits=None)": (lambda ctx: Captioner(ctx.folder / "nowhere", limits=None), "limits"),
        "Captioner(5)": (lambda ctx: Captioner(5), "bundle"),
        "Captioner(fast_decode='no')": (lambda ctx: Captioner(ctx.folder / "nowhere", fast_decode="no"), "fast_decode"),
        "Captioner(verify='no')": (lambda ctx: Captioner(ctx.folder / "nowhere", verify="no"), "verify"),
        "Captioner(optimized_model_dir=5)": (lambda ctx: Captioner(ctx.folder / "nowhere", optimized_model_dir=5), "optimized_model_dir"),
        "caption_batch(5)": (lambda ctx: ctx.captioner.caption_batch(5), "caption_batch"),
        "caption_batch(None)": (lambda ctx: ctx.captioner.caption_batch(None), "caption_batch"),
        "caption_batch(one path)": (lambda ctx: ctx.captioner.caption_batch(str(ctx.good[0])), "caption()"),
        "caption_batch(one array)": (lambda ctx: ctx.captioner.caption_batch(np.zeros((8, 8, 3), np.uint8)), "caption()"),
        "iter_captions(3.5)": (lambda ctx: ctx.captioner.iter_captions(3.5), "iter_captions"),
        "caption(img, 'greedy')": (lambda ctx: ctx.captioner.caption(ctx.good[0], "greedy"), "options"),
        "caption(img, {'temperature': 1})": (lambda ctx: ctx.captioner.caption(ctx.good[0], {"temperature": 1}), "options"),
        "caption(img, temprature=1)": (lambda ctx: ctx.captioner.caption(ctx.good[0], temprature=1), "temprature"),
        "caption_pixels(a list)": (lambda ctx: ctx.captioner.caption_pixels([[0.0]], ["a"]), "caption_pixels"),
        "caption_pixels(options='x')": (lambda ctx: ctx.captioner.caption_pixels(
            np.zeros((1, 3, ctx.captioner.spec.crop, ctx.captioner.spec.crop), np.float32), ["a"], "x"), "options"),
    }
    cases += [ApiCase(name, "argument", make, (word,)) for name, (make, word) in arguments.items()]
    bad = {"temperature": ["hot", [1], float("nan"), -1, float("inf"), 10 ** 400], "top_k": [0, 1.5, True, "3"],
           "top_p": [0, 2, "x", float("nan")], "beam": [0, 10 ** 6, "3"], "max_length": [10 ** 9, True, 0],
           "seed": [-1, 1.5, "1"]}
    cases += [ApiCase(f"option {k}={v!r:.30}", "option", lambda ctx, k=k, v=v: {k: v, **({"temperature": 1} if k in ("top_k", "top_p") else {})},
                      (k.replace("_", "-"),)) for k, values in bad.items() for v in values]
    cases.append(ApiCase("option DecodingOptions(beam=2, temperature=1)", "option",
                         lambda ctx: {"options": DecodingOptions(beam=2, temperature=1.0)}, ("beam",)))
    legal = [{"temperature": 1e-320}, {"temperature": 5e-324}, {"temperature": 1e-320, "top_k": 3},
             {"temperature": 5e-324, "top_p": 0.5}, {"temperature": 1e308}, {"temperature": 1e308, "top_p": 1e-300},
             {"temperature": 1.0, "top_k": 10 ** 12}, {"temperature": 1.0, "seed": 2 ** 200},
             {"temperature": np.float32(0.5), "seed": np.uint64(2 ** 64 - 1)}, {"beam": 64}, {"max_length": 512}]
    cases += [ApiCase(f"option {', '.join(f'{k}={v!r}' for k, v in o.items())}", "legal option", lambda ctx, o=o: o)
              for o in legal]
    cases.append(ApiCase("a source that raises midway", "source", lambda ctx: None, ("the camera went away",)))
    cases += [ApiCase(f"pixels with {what}", "pixels", lambda ctx, v=v: v, ("not all finite",))
              for what, v in (("NaN", np.nan), ("inf", np.inf))]
    return cases


def _caption_problems(ctx: ApiContext, captions: list[Any], bad: Optional[int], words: tuple[str, ...] = ()) -> tuple[list[str], bool]:
    """Problems of a batch [good 0, X, good 1]: X (index ``bad``, None if X is legal) must have a one-line
    error, the good ones their captions alone (else a result lost)."""
    problems, lost = [], False
    if len(captions) != 3:
        return [f"{len(captions)} captions for 3 images"], True
    for i, expected in ((0, ctx.alone[0]), (2, ctx.alone[1])):
        if not captions[i].ok or (captions[i].tokens, captions[i].text) != (expected.tokens, expected.text):
            problems.append(f"good image {i} lost its caption: {captions[i]}")
            lost = True
    middle = captions[1]
    if bad is None and not middle.ok:
        problems.append(f"refused a legal image in a batch: {middle.error}")
    if bad is not None:
        problems += ["the bad image got a caption"] if middle.ok else one_line_problems(middle.error, words)
    return problems, lost


def _try_api_case(case: ApiCase, ctx: ApiContext) -> tuple[list[str], bool, str]:
    """(problems, a result lost, the message) of one API case; exceptions escape to :func:`try_api`."""
    import numpy as np

    from capkit.runtime.errors import CapkitError

    c = ctx.captioner
    if case.kind in ("item", "image"):
        problems: list[str] = []
        try:
            single = c.caption(case.make(ctx))
            message = single.text
            if case.kind == "item":
                problems.append("caption() accepted it")
        except CapkitError as e:
            message = f"{type(e).__name__}: {e}"
            problems += one_line_problems(str(e)) + (["caption() refused a legal image"] if case.kind == "image" else [])
        batch, lost = _caption_problems(ctx, c.caption_batch([ctx.good[0], case.make(ctx), ctx.good[1]], batch_size=2),
                                        1 if case.kind == "item" else None)
        return problems + batch, lost, message
    if case.kind in ("option", "legal option"):
        overrides = dict(case.make(ctx))
        options = overrides.pop("options", None)
        try:
            caption = c.caption(ctx.good[0], options, **overrides)
        except CapkitError as e:
            wrong = ["refused legal options"] if case.kind == "legal option" else []
            return wrong + one_line_problems(str(e), case.words), False, f"{type(e).__name__}: {e}"
        if case.kind == "option":
            return ["accepted bad options"], False, caption.text
        batch = c.caption_batch([ctx.good[0], ctx.good[1]], options, **overrides)
        return [f"batch: {b.error}" for b in batch if not b.ok], False, caption.text
    if case.kind == "argument":
        try:
            case.make(ctx)
        except TypeError as e:
            return one_line_problems(str(e), case.words), False, f"{type(e).__name__}: {e}"
        return ["accepted a wrong argument"], False, ""
    if case.kind == "source":
        def source() -> Iterator[Any]:
            yield ctx.good[0]
            yield None
            yield ctx.good[1]
            raise RuntimeError("the camera went away")
        got: list[Any] = []
        try:
            for caption in c.iter_captions(source(), batch_size=2):
                got.append(caption)
        except RuntimeError as e:  # documented: the caller's own error, after the captions of what it gave
            problems, lost = _caption_problems(ctx, got, 1)
            return problems + one_line_problems(str(e), case.words), lost, f"{len(got)} captions, then {e}"
        return ["the source's error was swallowed"], False, ""
    crop = c.spec.crop  # pixels: a row with NaN or inf between two good rows
    rows = np.stack([c.preprocess(ctx.good[0]), np.full((3, crop, crop), case.make(ctx), np.float32), c.preprocess(ctx.good[1])])
    problems, lost = _caption_problems(ctx, c.caption_pixels(rows, ["good", "bad", "good"]), 1, case.words)
    return problems, lost, ""


def try_api(case: ApiCase, ctx: ApiContext) -> Result:
    result = Result(case.name, case.hostile)
    with watched() as printed:
        try:
            result.problems, result.lost, message = _try_api_case(case, ctx)
            result.message = message[:300]
        except Exception as e:  # anything the case did not expect: a broken guarantee
            result.problems.append(f"raised {type(e).__name__}: {str(e)[:200]}")
        finally:
            for f in ctx.opened:
                f.close()
            ctx.opened.clear()
    result.problems += [f"printed on stderr: {line[:200]}" for line in printed]
    return result


def api_context(captioner: Any, folder: Path) -> ApiContext:
    """Two good images and a text file in ``folder``, and the captions the good ones get alone."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for name, colour in (("good-0.png", (20, 160, 90)), ("good-1.png", (200, 40, 40))):
        Image.new("RGB", (48, 40), colour).save(folder / name)
        good.append(str(folder / name))
    (folder / "text.png").write_text("not an image\n")
    return ApiContext(captioner, good, [captioner.caption(g) for g in good], folder)


# -- running a surface ----------------------------------------------------------------------------------------------
SURFACES = {"readers": "dataset readers", "api": "Python API"}


def run_surface_here(surface: str, root: Path, bundle: Optional[str] = None) -> list[Result]:
    """Every case of ``surface`` in this process (what the child runs)."""
    if surface == "readers":
        folder = root / "readers"
        return [try_reader(case, folder) for case in reader_cases(folder)]
    from capkit.runtime import Captioner

    captioner = Captioner(bundle, device="cpu", threads=1)
    ctx = api_context(captioner, root / "api")
    return [try_api(case, ctx) for case in api_cases()]


def run_surface(surface: str, root: Path, bundle: Optional[Path] = None) -> list[Result]:
    """Every case of ``surface`` in one child process under hostile_corpus's memory limit; a child that dies
    (a signal, the memory limit, the timeout) or prints anything besides the results breaks every case."""
    import hostile_corpus as corpus
    command = [sys.executable, str(Path(__file__).resolve()), "--child", surface, str(root), str(bundle or "")]
    launcher = [sys.executable, "-S", "-I", "-c", corpus.LAUNCHER, json.dumps(command), str(corpus.SAFETY_NET_BYTES),
                str(CHILD_TIMEOUT_S)]
    import subprocess

    proc = subprocess.run(launcher, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S + 60)
    run = json.loads(proc.stdout)
    try:
        results = [Result(**r) for r in json.loads(run["stdout"])]
    except (ValueError, TypeError):
        results = [Result(f"the {SURFACES[surface]} child", True, problems=[f"exit {run['status']}: {run['stderr'][-300:]!r}"])]
    if run["status"] != 0 or run["stderr"].strip():
        results.append(Result(f"the {SURFACES[surface]} child", True,
                              problems=[f"exit {run['status']}, stderr {run['stderr'].strip()[-300:]!r}"]))
    return results


def summary(results: list[Result]) -> dict[str, int]:
    return {"tried": len(results), "hostile": sum(r.hostile for r in results),
            "refused cleanly": sum(r.hostile and not r.problems for r in results),
            "legal, kept": sum(not r.hostile and not r.problems for r in results),
            "results lost": sum(r.lost for r in results), "broken guarantees": sum(bool(r.problems) for r in results)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        surface, root, bundle = argv[1], Path(argv[2]), argv[3] or None
        results = run_surface_here(surface, root, bundle)
        print(json.dumps([asdict(r) for r in results]))
        return 0
    surfaces = argv or list(SURFACES)
    broken = 0
    with tempfile.TemporaryDirectory(prefix="capkit-hostile-readers-") as tmp:
        root = Path(tmp)
        for surface in surfaces:
            started = time.perf_counter()
            bundle = __import__("hostile_corpus").tiny_bundle(root / "bundle") if surface == "api" else None
            results = run_surface(surface, root, bundle)
            for r in results:
                print(f"{'ok ' if not r.problems else 'BAD'} {r.name[:48]!r:50} " + ("; ".join(r.problems) or r.message)[:110])
            counts = summary(results)
            broken += counts["broken guarantees"]
            print(f"{SURFACES[surface]}: {json.dumps(counts)} ({time.perf_counter() - started:.0f} s)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
