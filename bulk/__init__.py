"""Bulk captioning: a whole collection into one JSONL file, streamed, resumable, with reading overlapped;
on one machine (:func:`run_bulk`) or on a Ray cluster (:mod:`capkit.bulk.ray`, ``pip install 'capkit[ray]'``).

    from capkit.runtime import Captioner
    from capkit.bulk import run_bulk
    summary = run_bulk(Captioner("bundle"), ["photos/", "more.txt"], "captions.jsonl", readers=2)

Sources are what :mod:`capkit.bulk.listing` lists (folders, glob patterns, image files, and listings:
``.txt``/``.lst`` of paths, ``.jsonl`` with an ``image`` or ``path`` field, ``.csv`` with such a column),
read lazily, each line and CSV row a bounded piece at a time: nothing holds the list of images. This
package sits above the runtime: an app that only captions imports :mod:`capkit.runtime`.

Guarantees:

* One JSON line per image, the fields of ``capkit caption --json`` (image, caption, tokens, logprob;
  or image, error), plus ``sha256`` with ``skip_by="hash"``, and ``image_bytes`` (the name's bytes,
  base64) for a file name that is not valid UTF-8, whose ``image`` shows each undecodable byte as
  ``\\xNN``: every line is valid UTF-8 and reads back the exact name. Lines are in the listing's order.
  A source that names nothing (a missing file, an empty folder, a glob with no match, a bad listing
  line or CSV row) gets an error line in its place; every other image is still captioned.
* The output is capkit's or nothing: ``out`` must be absent, empty, or a regular file whose first line
  is a capkit line; anything else (a device, a FIFO, a picture, another program's file) is refused
  in one line, untouched. Lines are read back a bounded piece at a time (4 MiB at most; capkit writes
  none longer).
* Lines are written in groups (``group`` lines or every ``interval`` seconds), each group with one
  ``write``, and fsync'ed at least every second: a killed process loses at most the group being
  gathered, a crash of the machine the last second or so. A torn last line (a crash mid-write, a
  full disk) is dropped when the run is resumed.
* Resume: a run whose ``out`` exists skips the images it already holds (by resolved path, so that
  ``dir/./x.png``, ``dir/x.png`` and a link to it are one image; with ``skip_by="hash"`` by content
  sha256 too), then appends the others in the listing's order. An image listed twice, however it is
  named, is captioned once. An interrupted run, resumed by the same command on the same machine, holds
  each image exactly once and its file equals an uninterrupted run's byte for byte, logprobs included:
  batches are made as the uninterrupted run made them (see :class:`capkit.bulk.local._Run`). Error
  lines count as done: to retry the failed images, drop their lines (``grep -v '"error"'``).
* Memory does not depend on the number of images, except for 8 bytes an image (16 a failed one): the
  images already done are kept as 64-bit digests of their keys (sorted numpy arrays), so that each is
  written once.
* ``readers`` threads read and preprocess images (Pillow releases the GIL while decoding) while the
  model captions the previous batch; ``readers=0`` reads in the captioning thread (no overlap).
"""

from capkit.bulk.listing import ImageInput, expand_inputs, iter_inputs
from capkit.bulk.local import SKIP_BY, run_bulk
from capkit.bulk.output import BulkError, BulkSummary

__all__ = ["SKIP_BY", "BulkError", "BulkSummary", "ImageInput", "expand_inputs", "iter_inputs", "run_bulk"]
