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

import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
from PIL import Image

from capkit.runtime.bundle import Bundle, load_bundle
from capkit.runtime.decoding import (DecodingOptions, DecodingOptionsError, DecodingResult, Inference, decode,
                                     verify_options, with_overrides)
from capkit.runtime.errors import CapkitError, check_int, one_line, printable
from capkit.runtime.image_files import ImageError, ImageSource
from capkit.runtime.limits import DEFAULT_LIMITS, Limits
from capkit.runtime.manifest import Manifest
from capkit.runtime.preprocess import PreprocessSpec, preprocess
from capkit.runtime.vocab import Vocabulary

DEFAULT_BATCH_SIZE = 16
PathArgument = (str, os.PathLike)


class ArgumentTypeError(CapkitError, TypeError):
    """An argument of the wrong type, a mistake in the calling code rather than bad data: ``limits`` that is not
    a :class:`Limits`, ``options`` that is not a :class:`DecodingOptions`, one image or a number where several
    images go. A TypeError, as Python's convention has it, and a CapkitError, so that code catching capkit's
    errors catches it too. (Bad data, an unreadable image of any type or an option's value, is a CapkitError.)"""


def check_argument(value: Any, kinds: Union[type, tuple[type, ...]], name: str, what: str) -> None:
    """ArgumentTypeError naming ``name`` unless ``value`` is an instance of ``kinds`` (``what``: which, in words)."""
    if not isinstance(value, kinds):
        raise ArgumentTypeError(f"{name} must be {what}, got {type(value).__name__}")


def _check_setup(limits: Any, fast_decode: Any) -> None:
    check_argument(limits, Limits, "limits", "a capkit.runtime.Limits")
    check_argument(fast_decode, (bool, np.bool_), "fast_decode", "True or False")


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
    try:
        if isinstance(source, (str, os.PathLike)):
            return os.fsdecode(os.fspath(source))
        if isinstance(source, Image.Image):
            filename = getattr(source, "filename", None)
            return os.fsdecode(filename) if filename else None
    except (TypeError, ValueError):  # a PathLike whose __fspath__ gives neither str nor bytes
        pass
    return None


def check_batch_size(batch_size: int, limits: Limits = DEFAULT_LIMITS) -> int:
    batch_size = check_int(batch_size, "batch size", error=DecodingOptionsError)
    limits.check("max_batch_size", batch_size, "batch size")
    return batch_size


def failed_caption(label: Optional[str], error: BaseException, what: str = "") -> Caption:
    """The error Caption of an image that could not be read (or, ``what``, be captioned): one line, naming the
    image where it has a label."""
    message = one_line(error)
    if not isinstance(error, CapkitError) and message != type(error).__name__:  # unexpected: say what kind
        message = f"{type(error).__name__}: {message}"
    if what:
        message = f"{what}: {message}"
    name = printable(label) if label else None
    if name and not message.startswith(f"{name}:"):  # preprocessing's messages already start with the name
        message = f"{name}: {message}"
    return Caption(text="", tokens=(), logprob=None, image=label, error=message, finished=False)


class Captioner:
    """Captions images with a bundle (ONNX Runtime) or, via :meth:`from_inference`, any Inference.

    ``bundle``: a bundle folder, a loaded :class:`Bundle`, or None for ``$CAPKIT_MODEL`` /
    ``runs/latest/bundle``. The bundle is checked (format version, sha256 of each graph, file
    names inside the folder) and the ONNX Runtime sessions are built once, here.

    Decoding options left out (None) take the bundle's defaults (its manifest's ``decoding``
    block, see docs/bundle.md): ``captioner.defaults``. ``limits`` bounds what one caption may
    cost (:class:`~capkit.runtime.limits.Limits`). ``fast_decode``: large JPEGs are decoded at
    reduced scale (libjpeg's DCT scaling, see ``preprocess``); False decodes every pixel, for exact
    parity with torchvision's transforms. ``step_threads``: the decoder step graph's own intra-op threads
    (None: as ``threads``); ``spin_us``: how long idle ONNX Runtime threads spin before they sleep, in
    microseconds (None: OnnxInference's default; 0: never). A process whose other threads need the cores,
    as ``capkit serve``'s do, wants both small (see OnnxInference).

    Errors, everywhere in this class: an argument of the wrong type (``limits="big"``, ``options="greedy"``,
    ``caption_batch(5)``, ``fast_decode="no"``) raises TypeError (:class:`ArgumentTypeError`, also a
    CapkitError); an unknown keyword raises TypeError. Bad data raises a CapkitError with one line naming
    it: a bundle (BundleError), a decoding option's value or type and a batch size (DecodingOptionsError or
    LimitError; options also come from the command line and manifests), an image (ImageError from
    :meth:`caption`; in :meth:`caption_batch` that image's Caption has ``error`` set instead), a model whose
    logits are not finite (LogitsError, likewise that image's error in a batch).
    """

    def __init__(self, bundle: Union[str, os.PathLike, Bundle, None] = None, device: str = "auto",
                 threads: Optional[int] = None, *, verify: bool = True, graph_optimization: str = "all",
                 optimized_model_dir: Union[str, os.PathLike, None] = None, io_binding: Optional[bool] = None,
                 limits: Limits = DEFAULT_LIMITS, fast_decode: bool = True, step_threads: Optional[int] = None,
                 spin_us: Optional[int] = None):
        check_argument(bundle, (*PathArgument, Bundle, type(None)), "bundle",
                       "a folder (str or os.PathLike), a Bundle or None")
        check_argument(verify, (bool, np.bool_), "verify", "True or False")
        check_argument(io_binding, (bool, np.bool_, type(None)), "io_binding", "True, False or None")
        check_argument(optimized_model_dir, (*PathArgument, type(None)), "optimized_model_dir", "a folder or None")
        _check_setup(limits, fast_decode)
        self.bundle: Optional[Bundle] = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=verify, limits=limits)
        manifest = self.bundle.manifest
        try:
            from capkit.runtime.onnx_inference import OnnxInference
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("onnxruntime"):
                raise
            raise CapkitError("ONNX Runtime is not installed: pip install 'capkit[cpu]' (or 'capkit[gpu]')") from None
        inference = OnnxInference(self.bundle, device=device, threads=threads, graph_optimization=graph_optimization,
                                  optimized_model_dir=optimized_model_dir, io_binding=io_binding, limits=limits,
                                  step_threads=step_threads, **({} if spin_us is None else {"spin_us": spin_us}))
        self._setup(inference, manifest.vocab, manifest.preprocess, manifest.decoding, limits, fast_decode)

    @classmethod
    def from_inference(cls, inference: Inference, vocab: Vocabulary, spec: PreprocessSpec, max_length: int,
                       bundle: Optional[Bundle] = None, *, limits: Limits = DEFAULT_LIMITS,
                       fast_decode: bool = True) -> "Captioner":
        """A Captioner over another Inference (e.g. the PyTorch reference): the same preprocessing and
        decoding; its defaults are greedy captions of at most ``max_length`` tokens (a bundle's own
        defaults when ``bundle`` is given)."""
        _check_setup(limits, fast_decode)
        check_argument(spec, PreprocessSpec, "spec", "a PreprocessSpec")
        self = cls.__new__(cls)
        self.bundle = bundle
        defaults = bundle.manifest.decoding if bundle is not None else DecodingOptions(max_length=int(max_length))
        self._setup(inference, vocab, spec, defaults, limits, fast_decode)
        return self

    def _setup(self, inference: Inference, vocab: Vocabulary, spec: PreprocessSpec, defaults: DecodingOptions,
               limits: Limits, fast_decode: bool) -> None:
        self.inference = inference
        self.vocab = vocab
        self.spec = spec
        self.limits = limits
        self.fast_decode = bool(fast_decode)
        self.defaults = verify_options(defaults, limits)  # the options a caption gets unless told otherwise

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """One image -> the encoder's input row, float32 (3, crop, crop), with this captioner's spec,
        limits and decoding choice (what every caption of it uses)."""
        return preprocess(image, self.spec, self.limits, fast_decode=self.fast_decode)

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

    def options(self, options: Optional[DecodingOptions] = None, /, **overrides: Any) -> DecodingOptions:
        """Checked decoding options: ``options`` (default :attr:`defaults`) with each keyword override that
        is not None (the fields of :class:`DecodingOptions`: temperature, top_k, top_p, beam, max_length,
        seed). A sampling option given without ``beam`` replaces a default beam search as a whole, so that
        ``temperature=0.7`` on a bundle whose default is beam search samples instead of failing. An unknown
        keyword, or ``options`` that is not a DecodingOptions, raises TypeError; a bad value (of any type)
        DecodingOptionsError (or LimitError), one line naming it."""
        check_argument(options, (DecodingOptions, type(None)), "options", "a DecodingOptions or None")
        return verify_options(with_overrides(self.defaults if options is None else options, overrides), self.limits)

    def caption(self, image: ImageSource, options: Optional[DecodingOptions] = None, /, **overrides: Any) -> Caption:
        """One image (a path, bytes, a Pillow image or an HxWx3 uint8 array) -> its Caption, decoded with
        :meth:`options` (``options`` and keyword overrides, e.g. ``temperature=0.7, seed=1``).

        Raises DecodingOptionsError for bad options, ImageError for an unreadable image of any type (a closed
        Pillow image, an array that is not HxWx3 uint8, bytes that are no image ...;
        :class:`~capkit.runtime.image_files.ImageLimitError`, also a LimitError, for one over ``limits``) and
        LogitsError when the model's logits are not finite; TypeError for an argument of the wrong type
        (see the class).
        """
        options = self.options(options, **overrides)
        pixels = self.preprocess(image)[None]  # (1, 3, H, W)
        decoded = decode(self.inference, pixels, options, self.vocab, limits=self.limits)
        return self._caption(decoded[0], image_label(image))

    def caption_batch(self, images: Iterable[ImageSource], options: Optional[DecodingOptions] = None, /, *,
                      batch_size: int = DEFAULT_BATCH_SIZE, **overrides: Any) -> list[Caption]:
        """Several images -> one Caption each, in input order. An item that cannot be read or
        preprocessed, whatever it is (a missing or corrupt file, an image over ``limits``, None, a
        number, an empty array ...), gives a Caption with ``error`` set (one line, naming the image
        where it has a label); so does an image whose decoding fails (the batch is split until the
        failing image is alone); the others are still captioned. Each image's caption equals
        :meth:`caption`'s (seeded sampling gives every image its own generator). If ``images``
        itself raises while being iterated (a failing generator), the images already read are
        captioned first, then its exception is raised: nothing read is lost, and the caller's own
        error is not disguised as an image's. ``images`` that is not an iterable, or is one image (a path,
        bytes, a Pillow image), raises TypeError (ArgumentTypeError) before any work; bad options or batch
        size DecodingOptionsError."""
        return list(self.iter_captions(images, options, batch_size=batch_size, **overrides))

    def iter_captions(self, images: Iterable[ImageSource], options: Optional[DecodingOptions] = None, /, *,
                      batch_size: int = DEFAULT_BATCH_SIZE, **overrides: Any) -> Iterator[Caption]:
        """:meth:`caption_batch` as a generator: yields each batch's captions as soon as they are decoded.

        Options are checked before the first image is read, even though the generator is lazy.
        When ``images`` raises midway, the captions of the images it gave before (those of the batch
        being read included) are yielded first, then its exception is raised from this generator."""
        options = self.options(options, **overrides)
        batch_size = check_batch_size(batch_size, self.limits)
        if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)) or \
                isinstance(images, np.ndarray) and images.ndim < 4:  # a (N, H, W, 3) stack is N images
            raise ArgumentTypeError(f"caption_batch and iter_captions take several images (a list or an iterable), "
                                    f"got one {type(images).__name__}; use caption() for one image")
        try:
            iterator = iter(images)
        except TypeError:
            raise ArgumentTypeError(f"caption_batch and iter_captions take several images (a list or an iterable), "
                                    f"got {type(images).__name__}") from None
        return self._iter(iterator, options, batch_size)

    def _iter(self, images: Iterator[ImageSource], options: DecodingOptions, batch_size: int) -> Iterator[Caption]:
        while True:
            chunk: list[ImageSource] = []
            failure: Optional[Exception] = None
            try:
                chunk.extend(itertools.islice(images, batch_size))  # keeps what it read when images raises
            except Exception as e:  # the source failed: caption what it gave, then raise its error
                failure = e
            if chunk:
                yield from self._caption_chunk(chunk, options)
            if failure is not None:
                raise failure
            if len(chunk) < batch_size:
                return

    def _caption_chunk(self, chunk: list[ImageSource], options: DecodingOptions) -> list[Caption]:
        results: list[Optional[Caption]] = [None] * len(chunk)
        rows, labels, where = [], [], []
        for i, source in enumerate(chunk):
            try:
                label = image_label(source)
            except Exception:  # a PathLike whose __fspath__ itself fails: no name, and preprocess reports it
                label = None
            try:
                rows.append(self.preprocess(source))  # (3, H, W)
            except Exception as e:  # anything at all, MemoryError included: this image only; the others go on
                results[i] = failed_caption(label, e)
                continue
            labels.append(label)
            where.append(i)
        if rows:
            for i, caption in zip(where, self._captions(np.stack(rows), labels, options)):
                results[i] = caption
        return results  # type: ignore[return-value]

    def caption_pixels(self, pixels: np.ndarray, labels: list[Optional[str]],
                       options: Optional[DecodingOptions] = None) -> list[Caption]:
        """Rows already preprocessed (float32 (B, 3, crop, crop), as :func:`preprocess` gives them, e.g. by
        reader threads) -> one Caption each, labelled ``labels[i]``, decoded by the same loop as
        :meth:`caption_batch`. ``options``: from :meth:`options` (checked once), default :attr:`defaults`.
        A row with a NaN or an infinity gets a Caption with ``error`` set; the others are captioned."""
        crop = self.spec.crop
        if (not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32 or pixels.ndim != 4
                or pixels.shape[1:] != (3, crop, crop) or not isinstance(labels, (list, tuple))
                or len(labels) != pixels.shape[0]):
            count = (f"{len(labels)} labels" if isinstance(labels, (list, tuple))
                     else f"labels of type {type(labels).__name__}")
            raise ArgumentTypeError(f"caption_pixels takes float32 (B, 3, {crop}, {crop}) rows and a list of B labels, "
                                    f"got {getattr(pixels, 'dtype', type(pixels).__name__)} "
                                    f"{getattr(pixels, 'shape', '')} and {count}")
        check_batch_size(pixels.shape[0], self.limits)
        check_argument(options, (DecodingOptions, type(None)), "options", "a DecodingOptions or None")
        options = self.defaults if options is None else verify_options(options, self.limits)
        finite = np.isfinite(pixels).all(axis=(1, 2, 3))  # (B,)
        if finite.all():
            return self._captions(pixels, list(labels), options)
        results = [failed_caption(label, ImageError("its pixels are not all finite numbers (NaN or infinity)"))
                   for label in labels]
        keep = np.flatnonzero(finite)
        if len(keep):
            for i, caption in zip(keep, self._captions(pixels[keep], [labels[i] for i in keep], options)):
                results[i] = caption
        return results

    def _captions(self, pixels: np.ndarray, labels: list[Optional[str]], options: DecodingOptions) -> list[Caption]:
        """Decodes rows (B, 3, crop, crop); when decoding fails (ONNX Runtime refusing an input, running out
        of memory ...), the batch is split in halves and each decoded again, so that only the image that
        fails gets an error Caption. Bad options are not an image's fault: they are checked before."""
        try:
            decoded = decode(self.inference, pixels, options, self.vocab, limits=self.limits)
        except Exception as e:
            if len(pixels) == 1:
                return [failed_caption(labels[0], e, "cannot be captioned")]
            half = len(pixels) // 2
            return (self._captions(pixels[:half], labels[:half], options)
                    + self._captions(pixels[half:], labels[half:], options))
        return [self._caption(result, label) for result, label in zip(decoded, labels)]

    def _caption(self, result: DecodingResult, label: Optional[str]) -> Caption:
        return Caption(text=self.vocab.decode(result.tokens), tokens=tuple(int(t) for t in result.tokens),
                       logprob=float(result.logprob), image=label, finished=result.finished)


__all__ = ["ArgumentTypeError", "Caption", "Captioner", "DEFAULT_BATCH_SIZE", "check_argument", "check_batch_size",
           "image_label"]
