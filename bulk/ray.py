"""Captioning on a Ray cluster (``pip install 'capkit[ray]'``): Ray Data maps batches through captioner actors.

    import ray
    from capkit.bulk.ray import caption_dataset
    ds = ray.data.from_items([{"path": p} for p in paths])   # or a "bytes" column (ray.data.read_binary_files)
    captions = caption_dataset(ds, "bundle/", concurrency=4, batch_size=16, temperature=0.7, seed=1)
    captions.write_parquet("captions/")

Each actor holds one :class:`~capkit.runtime.captioner.Captioner`, loaded once. How the bundle reaches
the workers: by default (``ship=True``) the driver reads the bundle's files (the manifest and the
graphs it names) and puts them in Ray's object store once (``ray.put``); each actor writes them to a
temporary folder on its node and loads them from there, checking each graph's sha256 against the
manifest as any bundle load does. Every name is the one the manifest gives (relative to the bundle's
resolved folder), and a name that would leave the actor's folder is refused. Nothing needs to be
installed or shared on the nodes but capkit itself. With ``ship=False`` the bundle's path is opened on
every node (a shared file system).

The output rows have the fields of ``capkit caption --json``: image, caption, tokens, logprob, and
error (null unless the image could not be read; then caption, tokens and logprob are null).
``ray`` is imported only when these functions are called: ``import capkit.bulk.ray`` is cheap.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

from capkit.bulk.local import error_caption, progress_bar, stderr_status, unseen_inputs
from capkit.bulk.output import BulkError, BulkSummary, LineWriter, open_output
from capkit.runtime.bundle import Bundle, load_bundle
from capkit.runtime.captioner import DEFAULT_BATCH_SIZE, Caption, check_batch_size
from capkit.runtime.decoding import check_given_options
from capkit.runtime.errors import CapkitError, Status, printable
from capkit.runtime.manifest import MANIFEST_NAME

COLUMNS = ("image", "caption", "tokens", "logprob", "error")
CHUNK = 20_000  # images per Ray dataset in run_on_ray: the listing is never held whole on the driver


def bundle_payload(bundle: Union[str, os.PathLike, Bundle, None]) -> dict[str, bytes]:
    """The bytes of a bundle's manifest and of each file it names, by that name (what an actor writes)."""
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    files = {MANIFEST_NAME: (loaded.folder / MANIFEST_NAME).read_bytes()}
    files.update((name, path.read_bytes()) for name, path in loaded.named_files().items())
    return files


def write_payload(files: dict[str, bytes], folder: Union[str, os.PathLike]) -> None:
    """Writes :func:`bundle_payload`'s files into ``folder``; a name that is not a plain relative path inside
    it (absolute, empty, with ``..``) is refused before anything is written."""
    root = Path(folder).resolve()
    targets = []
    for name in files:
        target = (root / name).resolve()
        if not name or Path(name).is_absolute() or root not in target.parents:
            raise CapkitError(f"bundle file {name!r} is not a file name inside the bundle folder (it would be "
                              f"written outside {printable(str(root))})")
        targets.append(target)
    for target, data in zip(targets, files.values()):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


class CaptionActor:
    """The callable class Ray Data runs on each actor: one Captioner, loaded in ``__init__``."""

    def __init__(self, bundle: Any, decoding: dict[str, Any], batch_size: int = DEFAULT_BATCH_SIZE,
                 threads: Optional[int] = None):
        from capkit.runtime.captioner import Captioner

        self._folder: Optional[str] = None
        if isinstance(bundle, list):  # [ObjectRef of bundle_payload()]: wrapped so that Ray hands over the ref
            import ray

            self._folder = tempfile.mkdtemp(prefix="capkit-bundle-")
            write_payload(ray.get(bundle[0]), self._folder)
            bundle = self._folder
        self.captioner = Captioner(bundle, device="cpu", threads=threads)
        self.options = self.captioner.options(**decoding)  # checked once, here
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        if "bytes" in batch:
            sources = [bytes(b) if b is not None else None for b in batch["bytes"]]
            names = batch.get("path", batch.get("image"))
            labels = [str(n) if n is not None else None for n in names] if names is not None else [None] * len(sources)
        elif "path" in batch or "image" in batch:
            labels = [str(p) for p in batch["path" if "path" in batch else "image"]]
            sources = list(labels)
        else:
            raise CapkitError(f"caption_dataset needs a 'path' (or 'image') or a 'bytes' column, got "
                              f"{', '.join(batch)}")
        captions = self.captioner.caption_batch(sources, self.options, batch_size=self.batch_size)
        rows = [caption_row(c, label) for c, label in zip(captions, labels)]
        return pa.Table.from_pylist(rows, schema=row_schema())

    def __del__(self) -> None:
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)


def row_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("image", pa.string()), ("caption", pa.string()), ("tokens", pa.list_(pa.int64())),
                      ("logprob", pa.float64()), ("error", pa.string())])


def caption_row(caption: Caption, label: Optional[str]) -> dict[str, Any]:
    """A Caption as one output row (all five columns); an image given as bytes is named by ``label``."""
    image = caption.image if caption.image is not None else label
    if not caption.ok:
        error = caption.error or ""
        if label and error.startswith("<bytes>"):
            error = printable(label) + error[len("<bytes>"):]
        return {"image": image, "caption": None, "tokens": None, "logprob": None, "error": error}
    return {"image": image, "caption": caption.text, "tokens": list(caption.tokens), "logprob": caption.logprob,
            "error": None}


def row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """An output row -> the object ``capkit caption --json`` prints for it."""
    if row.get("error") is not None:
        return {"image": row["image"], "error": row["error"]}
    tokens = row["tokens"]
    return {"image": row["image"], "caption": row["caption"], "tokens": [int(t) for t in tokens],
            "logprob": float(row["logprob"])}


def caption_dataset(dataset: Any, bundle: Union[str, os.PathLike, Bundle, None, list], *, concurrency: int = 1,
                    batch_size: int = DEFAULT_BATCH_SIZE, num_cpus: float = 1, threads: Optional[int] = 1,
                    ship: bool = True, **decoding: Any) -> Any:
    """``dataset`` (a ``ray.data.Dataset`` with a "path" or "image" column of paths, or a "bytes" column)
    -> a Dataset of captions, columns image, caption, tokens, logprob, error, one row per input row.

    ``concurrency``: actors (one Captioner each); ``num_cpus`` each; ``threads``: ONNX Runtime threads
    per graph in an actor (default 1: Ray's parallelism is the actors). ``bundle``: a bundle folder (or
    a loaded Bundle, or None for the default one), shipped through the object store (``ship=True``)
    or opened by path on each node (``ship=False``). ``decoding``: the fields of
    :class:`~capkit.runtime.decoding.DecodingOptions` (temperature, top_k, ...), as for ``Captioner.options``."""
    import ray

    check_given_options(**decoding)
    check_batch_size(batch_size)
    if isinstance(bundle, list):  # already shipped by run_on_ray
        source: Any = bundle
    elif ship:
        source = [ray.put(bundle_payload(bundle))]
    else:
        source = str((bundle if isinstance(bundle, Bundle) else load_bundle(bundle)).folder.resolve())
    return dataset.map_batches(CaptionActor, fn_constructor_kwargs={"bundle": source, "decoding": dict(decoding),
                                                                     "batch_size": batch_size, "threads": threads},
                               batch_size=batch_size, batch_format="numpy",
                               compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus,
                               zero_copy_batch=True)


# -- the CLI's bulk run on Ray ------------------------------------------------------------------------------------
def _connect(address: str, workers: int) -> bool:
    """Joins (or, for "local", starts) a Ray cluster; True when this call started Ray."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        ray.init(num_cpus=max(2, workers), **kwargs)
    else:
        ray.init(address=address, **kwargs)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # status goes to stderr; Ray's INFO lines drown it
    return True


def _ordered() -> None:
    """Ray Data keeps the listing's order (and draws no bars of its own), also on a cluster the caller started."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in the listing's order
    context.enable_progress_bars = False


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _captioned_rows(items: list, shipped: list, workers: int, batch_size: int, threads: Optional[int],
                    decoding: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One output row per listed item, in order: Ray's captions for the paths, error rows for the rest."""
    import ray

    paths = [{"path": item.path} for item in items if item.error is None]
    rows: Iterator[dict[str, Any]] = iter(())
    if paths:
        dataset = caption_dataset(ray.data.from_items(paths), shipped, concurrency=workers, batch_size=batch_size,
                                  threads=threads or 1, **decoding)
        rows = iter(dataset.iter_rows())
    for item in items:
        yield dict(next(rows)) if item.error is None else caption_row(error_caption(item), None)
    for extra in rows:  # none: drains Ray's iterator, so that it ends while connected
        raise BulkError(f"Ray returned more rows than images ({extra.get('image')!r})")


class _ParquetOut:
    """Parquet output: written to ``out``.partial, renamed to ``out`` when complete (not resumable)."""

    def __init__(self, out: str):
        self.out, self.partial, self.writer, self.rows = out, out + ".partial", None, []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.rows:
            table = pa.Table.from_pylist(self.rows, schema=row_schema())
            self.writer = self.writer or pq.ParquetWriter(self.partial, table.schema)
            self.writer.write_table(table)
            self.rows = []

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> None:
        """The run is complete: the file takes its name."""
        if self.writer is not None:
            self.close()
            os.replace(self.partial, self.out)


def run_on_ray(sources: Iterable[Union[str, os.PathLike]], out: Union[str, os.PathLike],
               bundle: Union[str, os.PathLike, None], *, address: str = "local", workers: int = 2,
               batch_size: int = DEFAULT_BATCH_SIZE, threads: Optional[int] = 1, chunk: int = CHUNK,
               progress: Optional[bool] = None, status: Status = stderr_status, **decoding: Any) -> BulkSummary:
    """``capkit caption SOURCE... --out FILE --ray [ADDRESS]``: the listing is streamed on the driver in chunks
    of ``chunk`` images, each captioned by ``workers`` actors; rows come back in the listing's order and are
    written as by :func:`capkit.bulk.local.run_bulk` (JSONL, resumable by path), or to Parquet for an
    ``out`` ending in .parquet (not resumable). The images are read by the workers, by path: on a real
    cluster the paths must be readable on every node."""
    try:
        import ray
    except ImportError:
        raise CapkitError("--ray needs Ray: pip install 'capkit[ray]'") from None
    out = os.fsdecode(out)
    parquet = out.lower().endswith(".parquet")
    if parquet and os.path.exists(out):
        raise BulkError(f"{printable(out)}: exists; Parquet output is not resumable (remove it, or write .jsonl)")
    check_given_options(**decoding)
    loaded = load_bundle(bundle)  # checked here, before a cluster is started
    done = None if parquet else open_output(out, status)
    summary = BulkSummary(out=out, torn_bytes=done.torn_bytes if done else 0,
                          unreadable_lines=done.unreadable if done else 0)
    started = _connect(address, workers)
    _ordered()
    shipped = [ray.put(bundle_payload(loaded))]
    bar = progress_bar(progress)
    writer = _ParquetOut(out) if parquet else LineWriter(out)
    start = time.perf_counter()
    try:
        for items in _chunks(unseen_inputs(sources, done.paths if done else None, summary), chunk):
            for row in _captioned_rows(items, shipped, workers, batch_size, threads, decoding):
                writer.write(row_to_json(row) if not parquet else row)
                summary.count(row["error"] is None)
                bar.update(1)
            writer.flush()
        if parquet:
            writer.finish()
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - start
        bar.close()
        writer.close()
        if started:
            ray.shutdown()
    return summary


__all__ = ["COLUMNS", "CaptionActor", "bundle_payload", "caption_dataset", "caption_row", "row_to_json",
           "run_on_ray", "write_payload"]
