"""Captioning on a Ray cluster (``pip install 'capkit[ray]'``): Ray Data maps batches through captioner actors.

    import ray
    from capkit.ray_data import caption_dataset
    ds = ray.data.from_items([{"path": p} for p in paths])   # or a "bytes" column (ray.data.read_binary_files)
    captions = caption_dataset(ds, "bundle/", concurrency=4, batch_size=16, temperature=0.7, seed=1)
    captions.write_parquet("captions/")

Each actor holds one :class:`~capkit.runtime.captioner.Captioner`, loaded once. How the bundle reaches
the workers: by default (``ship=True``) the driver reads the bundle's files (the manifest and the
graphs it names) and puts them in Ray's object store once (``ray.put``); each actor writes them to a
temporary folder on its node and loads them from there, checking each graph's sha256 against the
manifest as any bundle load does. Nothing needs to be installed or shared on the nodes but capkit
itself. With ``ship=False`` the bundle's path is opened on every node (a shared file system).

The output rows have the fields of ``capkit caption --json``: image, caption, tokens, logprob, and
error (null unless the image could not be read; then caption, tokens and logprob are null).
``ray`` is imported only when these functions are called: ``import capkit.ray_data`` is cheap.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from capkit.runtime.bulk import (BulkError, BulkSummary, LineWriter, progress_bar, printable, read_done,
                                 unseen_inputs)
from capkit.runtime.captioner import DEFAULT_BATCH_SIZE, Caption
from capkit.runtime.errors import CapkitError

COLUMNS = ("image", "caption", "tokens", "logprob", "error")
CHUNK = 20_000  # images per Ray dataset in run_on_ray: the listing is never held whole on the driver


def bundle_files(bundle: Union[str, os.PathLike, Any, None]) -> dict[str, bytes]:
    """The bytes of a bundle's manifest and graph files (what an actor needs), by file name."""
    from capkit.runtime.bundle import Bundle, load_bundle
    from capkit.runtime.manifest import MANIFEST_NAME

    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    files = {MANIFEST_NAME: (loaded.folder / MANIFEST_NAME).read_bytes()}
    for path in loaded.files():
        files[os.path.relpath(path, loaded.folder)] = path.read_bytes()
    return files


class CaptionActor:
    """The callable class Ray Data runs on each actor: one Captioner, loaded in ``__init__``."""

    def __init__(self, bundle: Any, decoding: dict[str, Any], batch_size: int = DEFAULT_BATCH_SIZE,
                 threads: Optional[int] = None):
        from capkit.runtime.captioner import Captioner

        self._folder: Optional[str] = None
        if isinstance(bundle, list):  # [ObjectRef of bundle_files()]: wrapped so that Ray hands over the ref
            import ray

            files = ray.get(bundle[0])
            self._folder = tempfile.mkdtemp(prefix="capkit-bundle-")
            for name, data in files.items():
                target = Path(self._folder, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            bundle = self._folder
        self.captioner = Captioner(bundle, device="cpu", threads=threads)
        self.decoding = decoding
        self.captioner.options(**decoding)  # checked once, here
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
        captions = self.captioner.caption_batch(sources, **self.decoding, batch_size=self.batch_size)
        rows = [caption_row(c, label) for c, label in zip(captions, labels)]
        return pa.table({
            "image": pa.array([r["image"] for r in rows], pa.string()),
            "caption": pa.array([r["caption"] for r in rows], pa.string()),
            "tokens": pa.array([r["tokens"] for r in rows], pa.list_(pa.int64())),
            "logprob": pa.array([r["logprob"] for r in rows], pa.float64()),
            "error": pa.array([r["error"] for r in rows], pa.string()),
        })

    def __del__(self) -> None:
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)


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


def caption_dataset(dataset: Any, bundle: Union[str, os.PathLike, Any, None], *, concurrency: int = 1,
                    batch_size: int = DEFAULT_BATCH_SIZE, num_cpus: float = 1, threads: Optional[int] = 1,
                    ship: bool = True, **decoding: Any) -> Any:
    """``dataset`` (a ``ray.data.Dataset`` with a "path" or "image" column of paths, or a "bytes" column)
    -> a Dataset of captions, columns image, caption, tokens, logprob, error, one row per input row.

    ``concurrency``: actors (one Captioner each); ``num_cpus`` each; ``threads``: ONNX Runtime threads
    per graph in an actor (default 1: Ray's parallelism is the actors). ``bundle``: a bundle folder (or
    a loaded Bundle, or None for the default one), shipped through the object store (``ship=True``)
    or opened by path on each node (``ship=False``). ``decoding``: temperature, top_k, top_p, beam,
    max_length, seed, as for :meth:`Captioner.caption_batch`."""
    import ray

    from capkit.runtime.bundle import Bundle, load_bundle
    from capkit.runtime.captioner import check_batch_size
    from capkit.runtime.decoding import check_given_options

    check_given_options(**decoding)
    check_batch_size(batch_size)
    if isinstance(bundle, list):  # already shipped by run_on_ray
        source: Any = bundle
    elif ship:
        source = [ray.put(bundle_files(bundle))]
    else:
        source = str((bundle if isinstance(bundle, Bundle) else load_bundle(bundle)).folder.resolve())
    return dataset.map_batches(CaptionActor, fn_constructor_kwargs={"bundle": source, "decoding": dict(decoding),
                                                                     "batch_size": batch_size, "threads": threads},
                               batch_size=batch_size, batch_format="numpy",
                               compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus,
                               zero_copy_batch=True)


# -- the CLI's bulk run on Ray ------------------------------------------------------------------------------------
def _connect(address: str, workers: int) -> None:
    import ray

    if ray.is_initialized():
        return
    import logging

    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        ray.init(num_cpus=max(2, workers), **kwargs)
    else:
        ray.init(address=address, **kwargs)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # status goes to stderr; Ray's INFO lines drown it


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_on_ray(sources: Iterable[Union[str, os.PathLike]], out: Union[str, os.PathLike],
               bundle: Union[str, os.PathLike, None], *, address: str = "local", workers: int = 2,
               batch_size: int = DEFAULT_BATCH_SIZE, threads: Optional[int] = 1, chunk: int = CHUNK,
               progress: Optional[bool] = None, status: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
               **decoding: Any) -> BulkSummary:
    """``capkit caption SOURCE... --out FILE --ray [ADDRESS]``: the listing is streamed on the driver in chunks
    of ``chunk`` images, each captioned by ``workers`` actors; rows come back in the listing's order and are
    written as by :func:`capkit.runtime.bulk.run_bulk` (JSONL, resumable by path), or to Parquet for an
    ``out`` ending in .parquet (written to ``out``.partial, renamed when complete; not resumable). The
    images are read by the workers, by path: on a real cluster the paths must be readable on every node."""
    try:
        import ray
    except ImportError:
        raise CapkitError("--ray needs Ray: pip install 'capkit[ray]'") from None
    out = os.fsdecode(out)
    parquet = out.lower().endswith(".parquet")
    if parquet and os.path.exists(out):
        raise BulkError(f"{printable(out)}: exists; Parquet output is not resumable (remove it, or write .jsonl)")
    if not parquet and os.path.isdir(out):
        raise BulkError(f"{printable(out)}: is a folder; --out takes a file (captions.jsonl)")
    from capkit.runtime.bundle import load_bundle
    from capkit.runtime.decoding import check_given_options

    check_given_options(**decoding)
    loaded = load_bundle(bundle)  # checked here, before a cluster is started
    done = read_done(out) if not parquet else None
    summary = BulkSummary(out=out)
    if done is not None and done.torn_bytes:
        status(f"{printable(out)}: dropped a torn last line ({done.torn_bytes} bytes) left by an interrupted run")
    if done is not None and done.lines:
        status(f"Resuming: {printable(out)} holds {done.lines:,} images; they are skipped")
    started = not ray.is_initialized()
    _connect(address, workers)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in the listing's order
    context.enable_progress_bars = False
    shipped = [ray.put(bundle_files(loaded))]

    def listed() -> Iterator[Any]:
        return unseen_inputs(sources, done.paths if done is not None else None, summary)

    bar = progress_bar(progress)
    writer = LineWriter(out) if not parquet else None
    parquet_writer = None
    partial = out + ".partial"
    start = time.perf_counter()
    try:
        for items in _chunks(listed(), chunk):
            paths = [{"path": item.path} for item in items if item.error is None]
            rows: Iterator[dict[str, Any]] = iter(())
            if paths:
                dataset = caption_dataset(ray.data.from_items(paths), shipped, concurrency=workers,
                                          batch_size=batch_size, threads=threads or 1, **decoding)
                rows = iter(dataset.iter_rows())
            results = []
            for item in items:
                if item.error is None:
                    row = dict(next(rows))
                else:
                    row = {"image": item.argument, "caption": None, "tokens": None, "logprob": None,
                           "error": item.error}
                summary.captioned += row["error"] is None
                summary.failed += row["error"] is not None
                if writer is not None:
                    writer.write(row_to_json(row))
                else:
                    results.append(row)
                if bar is not None:
                    bar.update(1)
            for extra in rows:  # none: drains Ray's iterator, so that it ends while connected
                raise BulkError(f"Ray returned more rows than images ({extra.get('image')!r})")
            if results:
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pylist(results, schema=pa.schema([
                    ("image", pa.string()), ("caption", pa.string()), ("tokens", pa.list_(pa.int64())),
                    ("logprob", pa.float64()), ("error", pa.string())]))
                if parquet_writer is None:
                    parquet_writer = pq.ParquetWriter(partial, table.schema)
                parquet_writer.write_table(table)
        if parquet:
            if parquet_writer is not None:
                parquet_writer.close()
                parquet_writer = None
                os.replace(partial, out)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if parquet_writer is not None:
            parquet_writer.close()
        if started:
            ray.shutdown()
    return summary


__all__ = ["COLUMNS", "CaptionActor", "bundle_files", "caption_dataset", "caption_row", "row_to_json", "run_on_ray"]
