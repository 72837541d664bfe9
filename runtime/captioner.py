"""The Python API: ``Captioner(bundle).caption(image)``.

A :class:`Captioner` holds one :class:`~capkit.runtime.decoding.Inference` (ONNX Runtime over a
bundle, or any other implementation such as the PyTorch reference), the vocabulary, the
preprocessing spec and the default caption length. Everything else is shared: images are loaded
and preprocessed by :mod:`capkit.runtime.preprocess`, decoded by the one loop in
:mod:`capkit.runtime.decoding`, one batch at a time, results in input order.

    from capkit import Captioner
    captioner = Captioner("runs/latest/bundle")
    print(captioner.caption("dog.jpg").text)
    for c in captioner.caption_batch(["a.jpg", "b.png"], temperature=0.7, seed=1):
        print(c.image, c.text if c.ok else c.error)
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
from PIL import Image

from capkit.runtime.bundle import Bundle, Manifest, load_bundle
from capkit.runtime.decoding import (DecodingOptions, DecodingOptionsError, DecodingResult, Inference, decode,
                                     verify_options)
from capkit.runtime.errors import CapkitError
from capkit.runtime.limits import DEFAULT_LIMITS, Limits
from capkit.runtime.preprocess import ImageError, ImageSource, PreprocessSpec, preprocess
from capkit.runtime.vocab import Vocabulary

DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class Caption:
    text: str  # the words, special tokens left out; "" when ``error`` is set
    tokens: tuple[int, ...]  # generated ids, <start> and <end> left out
    logprob: Optional[float]  # sum of the log-probabilities of the tokens, <end> included; None on error
    image: Optional[str] = None  # the path as given, a Pillow image's file name, or None (bytes, arrays)
    error: Optional[str] = None  # one line naming the problem when the image could not be read
    finished: bool = True  # False when the caption hit max_length before <end>

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``capkit caption --json`` prints: image, caption, tokens, logprob (or image, error)."""
        if not self.ok:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "caption": self.text, "tokens": list(self.tokens), "logprob": self.logprob}


def image_label(source: Any) -> Optional[str]:
    """A name for an image source: the path as given, a Pillow image's file name, else None."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", None) or None
    return None


def check_batch_size(batch_size: int, limits: Limits = DEFAULT_LIMITS) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DecodingOptionsError(f"batch size must be an integer >= 1, got {batch_size!r}")
    limits.check("max_batch_size", batch_size, "batch size")
    return int(batch_size)


def _failed(label: Optional[str], error: BaseException) -> Caption:
    message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if label and not isinstance(error, ImageError):  # ImageError messages already name the file
        message = f"{label}: {message}"
    return Caption(text="", tokens=(), logprob=None, image=label, error=message, finished=False)


class Captioner:
    """Captions images with a bundle (ONNX Runtime) or, via :meth:`from_inference`, any Inference.

    ``bundle``: a bundle folder, a loaded :class:`Bundle`, or None for ``$CAPKIT_MODEL`` /
    ``runs/latest/bundle``. The bundle is checked (format version, sha256 of each graph, file
    names inside the folder) and the ONNX Runtime sessions are built once, here.

    Decoding options left out (None) take the bundle's defaults (its manifest's ``decoding``
    block, see docs/bundle.md): ``captioner.defaults``. ``limits`` bounds what one caption may
    cost (:class:`~capkit.runtime.limits.Limits`).
    """

    def __init__(self, bundle: Union[str, os.PathLike, Bundle, None] = None, device: str = "auto",
                 threads: Optional[int] = None, *, verify: bool = True, graph_optimization: str = "all",
                 optimized_model_dir: Union[str, os.PathLike, None] = None, io_binding: Optional[bool] = None,
                 limits: Limits = DEFAULT_LIMITS):
        self.bundle: Optional[Bundle] = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=verify)
        manifest = self.bundle.manifest
        try:
            from capkit.runtime.onnx_inference import OnnxInference
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("onnxruntime"):
                raise
            raise CapkitError("ONNX Runtime is not installed: pip install 'capkit[cpu]' (or 'capkit[gpu]')") from None
        inference = OnnxInference(self.bundle, device=device, threads=threads, graph_optimization=graph_optimization,
                                  optimized_model_dir=optimized_model_dir, io_binding=io_binding)
        self._setup(inference, manifest.vocab, manifest.preprocess, manifest.decoding, limits)

    @classmethod
    def from_inference(cls, inference: Inference, vocab: Vocabulary, spec: PreprocessSpec, max_length: int,
                       bundle: Optional[Bundle] = None, *, limits: Limits = DEFAULT_LIMITS) -> "Captioner":
        """A Captioner over another Inference (e.g. the PyTorch reference): the same preprocessing and
        decoding; its defaults are greedy captions of at most ``max_length`` tokens (a bundle's own
        defaults when ``bundle`` is given)."""
        self = cls.__new__(cls)
        self.bundle = bundle
        defaults = bundle.manifest.decoding if bundle is not None else DecodingOptions(max_length=int(max_length))
        self._setup(inference, vocab, spec, defaults, limits)
        return self

    def _setup(self, inference: Inference, vocab: Vocabulary, spec: PreprocessSpec, defaults: DecodingOptions,
               limits: Limits) -> None:
        self.inference = inference
        self.vocab = vocab
        self.spec = spec
        self.limits = limits
        self.defaults = verify_options(defaults, limits)  # the options a caption gets unless told otherwise

    @property
    def max_length(self) -> int:
        """The default longest caption, in tokens."""
        return self.defaults.max_length

    @property
    def manifest(self) -> Optional[Manifest]:
        return self.bundle.manifest if self.bundle is not None else None

    @property
    def device(self) -> str:
        """Where the model runs ("cpu" or "cuda")."""
        return str(getattr(self.inference, "device", "cpu"))

    def __repr__(self) -> str:
        where = self.bundle.folder if self.bundle is not None else type(self.inference).__name__
        return f"Captioner({str(where)!r}, device={self.device!r})"

    def options(self, temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                beam: Optional[int] = None, max_length: Optional[int] = None, seed: Optional[int] = None) -> DecodingOptions:
        """Checked decoding options: each one given, else the default's (:attr:`defaults`). A given
        temperature, top-k or top-p replaces the default sampling as a whole, so that ``temperature=0.7``
        on a bundle whose default is beam search samples instead of failing."""
        given = {name: value for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                                                 ("beam", beam), ("max_length", max_length), ("seed", seed))
                 if value is not None}
        base = self.defaults
        if given.keys() & {"temperature", "top_k", "top_p"} and "beam" not in given:
            base = dataclasses.replace(base, beam=1)
        return verify_options(dataclasses.replace(base, **given), self.limits)

    def caption(self, image: ImageSource, temperature: Optional[float] = None, top_k: Optional[int] = None,
                top_p: Optional[float] = None, beam: Optional[int] = None, max_length: Optional[int] = None,
                seed: Optional[int] = None) -> Caption:
        """One image (a path, bytes, a Pillow image or an HxWx3 uint8 array) -> its Caption.

        Raises DecodingOptionsError for bad options and ImageError for an unreadable image.
        """
        options = self.options(temperature, top_k, top_p, beam, max_length, seed)
        pixels = preprocess(image, self.spec)[None]  # (1, 3, H, W)
        return self._captions(pixels, [image_label(image)], options)[0]

    def caption_batch(self, images: Iterable[ImageSource], temperature: Optional[float] = None,
                      top_k: Optional[int] = None, top_p: Optional[float] = None, beam: Optional[int] = None,
                      max_length: Optional[int] = None,
                      seed: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Caption]:
        """Several images -> one Caption each, in input order. An image that cannot be read gives a
        Caption with ``error`` set; the others are still captioned. Each image's caption equals
        :meth:`caption`'s (seeded sampling gives every image its own generator)."""
        return list(self.iter_captions(images, temperature, top_k, top_p, beam, max_length, seed, batch_size))

    def iter_captions(self, images: Iterable[ImageSource], temperature: Optional[float] = None,
                      top_k: Optional[int] = None, top_p: Optional[float] = None, beam: Optional[int] = None,
                      max_length: Optional[int] = None,
                      seed: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[Caption]:
        """:meth:`caption_batch` as a generator: yields each batch's captions as soon as they are decoded.

        Options are checked before the first image is read, even though the generator is lazy."""
        options = self.options(temperature, top_k, top_p, beam, max_length, seed)
        batch_size = check_batch_size(batch_size, self.limits)
        return self._iter(iter(images), options, batch_size)

    def _iter(self, images: Iterator[ImageSource], options: DecodingOptions, batch_size: int) -> Iterator[Caption]:
        while chunk := list(itertools.islice(images, batch_size)):
            yield from self._caption_chunk(chunk, options)

    def _caption_chunk(self, chunk: list[ImageSource], options: DecodingOptions) -> list[Caption]:
        results: list[Optional[Caption]] = [None] * len(chunk)
        rows, labels, where = [], [], []
        for i, source in enumerate(chunk):
            label = image_label(source)
            try:
                rows.append(preprocess(source, self.spec))  # (3, H, W)
            except (ImageError, OSError, ValueError) as e:  # this image only; the others go on
                results[i] = _failed(label, e)
                continue
            labels.append(label)
            where.append(i)
        if rows:
            for i, caption in zip(where, self._captions(np.stack(rows), labels, options)):
                results[i] = caption
        return results  # type: ignore[return-value]

    def _captions(self, pixels: np.ndarray, labels: list[Optional[str]], options: DecodingOptions) -> list[Caption]:
        decoded = decode(self.inference, pixels, options, start_id=self.vocab.start_id, end_id=self.vocab.end_id,
                         limits=self.limits)
        return [self._caption(result, label) for result, label in zip(decoded, labels)]

    def _caption(self, result: DecodingResult, label: Optional[str]) -> Caption:
        return Caption(text=self.vocab.decode(result.tokens), tokens=tuple(int(t) for t in result.tokens),
                       logprob=float(result.logprob), image=label, finished=result.finished)


__all__ = ["Caption", "Captioner", "DEFAULT_BATCH_SIZE", "check_batch_size", "image_label"]
