"""The one decoding loop: greedy, temperature sampling (with top-k / top-p) and beam search.

The loop only calls an :class:`Inference` (encode images, run one step, select state rows),
then the logit filters, then a :class:`TokenDecoder`. The ONNX Runtime inference lives in
``capkit.runtime.onnx_inference``; training has a thin torch adapter over the same interface,
so the PyTorch reference and the runtime share this loop and sampling parity holds by
construction.

Seeded sampling is defined once, here: every image (batch row) owns a
``numpy.random.default_rng(seed)`` and draws one uniform number per decoding step; the token is
found by inverse CDF over ``softmax(logits / T)`` computed in float64. A caption is therefore a
function of (image, seed) alone: batching and the order of images do not change it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from capkit.runtime.errors import CapkitError, is_int
from capkit.runtime.limits import DEFAULT_LIMITS, Limits
from capkit.runtime.logits import (NOT_FINITE, LogitFilter, LogitsError, TopK, TopP, chosen_log_softmax,
                                   greedy_from_logits, log_softmax, sample_from_scores, scaled_scores)

InferenceState = Any  # whatever an Inference keeps between steps (numpy arrays, OrtValues, torch tensors)


class Inference(Protocol):
    def encode(self, images: np.ndarray) -> InferenceState:
        """float32 (B, 3, H, W) normalised images -> the recurrent state after the image step."""

    def step(self, tokens: np.ndarray, state: InferenceState) -> tuple[np.ndarray, InferenceState]:
        """int64 (B,) tokens and state -> float32 (B, V) logits on the host, and the next state."""

    def select(self, state: InferenceState, rows: np.ndarray) -> InferenceState:
        """The state's batch rows ``rows`` (int64 (B',), may repeat): drops finished rows, reorders beams."""


class GreedyInference(Inference, Protocol):
    """An Inference that can also make the greedy choice itself (optional: :func:`decode` uses
    ``greedy_step`` when the inference has it and the decoding is greedy). An optional attribute
    ``mask_finished_rows`` (absent: False) asks the loop to keep finished rows in the batch: it then
    passes back the tokens ``greedy_step`` returned, as they are, for every row."""

    def greedy_step(self, tokens: np.ndarray, state: InferenceState) -> tuple[np.ndarray, np.ndarray, InferenceState]:
        """Like ``step``, but returns argmax(logits) int64 (B,) and its log-softmax float64 (B,)
        (:func:`greedy_from_logits`'s answer) instead of the logits, and the next state. The arrays
        returned may be buffers that the step after next overwrites (the ONNX Runtime inference on
        the CPU reuses two sets): copy what is kept longer, as the loop does."""


def option(default: Any, *, flag: str, kind: type, help: str, minimum: Optional[float] = None,
           above: Optional[float] = None, maximum: Optional[float] = None, limit: Optional[str] = None) -> Any:
    """A :class:`DecodingOptions` field: its default and everything derived from it elsewhere: the CLI
    flag and help (``cli/options.py``), the manifest's ``decoding`` block (``runtime/manifest``), the
    Python API's keyword overrides (``Captioner``), the check (:func:`verify_options`: ``kind``, the range
    ``minimum <= v`` or ``above < v <= maximum``, and the :class:`Limits` field ``limit``) and the
    JavaScript runtime's constants (generated from these fields). A default of None: the option may be
    left unset."""
    return field(default=default, metadata={"flag": flag, "kind": kind, "help": help, "minimum": minimum,
                                            "above": above, "maximum": maximum, "limit": limit})


@dataclass(frozen=True)
class DecodingOptions:
    """How a caption is chosen. Adding an option: a field here (with :func:`option`), and its use in a
    TokenDecoder or LogitFilter (and in clients/js/src/decoding.js); everything else derives from the field."""

    temperature: float = option(0.0, flag="--temp", kind=float, minimum=0.0,
                                help="0 = greedy (argmax); > 0 samples from softmax(logits / T).")
    top_k: Optional[int] = option(None, flag="--top-k", kind=int, minimum=1,
                                  help="Sample among the K most likely words only.")
    top_p: Optional[float] = option(None, flag="--top-p", kind=float, above=0.0, maximum=1.0,
                                    help="Sample from the smallest set of words whose probability reaches P.")
    beam: int = option(1, flag="--beam", kind=int, minimum=1, limit="max_beam",
                       help="Beam width; > 1: beam search (deterministic: temperature 0, no top-k/top-p).")
    max_length: int = option(20, flag="--max-length", kind=int, minimum=1, limit="max_length",
                             help="Most tokens generated per caption, <end> included.")
    seed: Optional[int] = option(None, flag="--seed", kind=int, minimum=0,
                                 help="Seeds every image's own generator: the same seed gives the same caption.")

    @property
    def greedy(self) -> bool:
        """Whether the choice is argmax(logits): temperature 0, or top-k 1 (whose only candidate is the
        argmax, ties aside), and no beam search."""
        return self.beam == 1 and (self.temperature == 0 or self.top_k == 1)


OPTION_NAMES = tuple(f.name for f in fields(DecodingOptions))
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")  # given without beam, they replace a default beam search


@dataclass(frozen=True)
class DecodingResult:
    tokens: tuple[int, ...]  # generated ids, <start> and <end> left out
    logprob: float  # sum of log softmax(logits) over the generated tokens, <end> included
    finished: bool  # True when <end> was produced within max_length


class SpecialIds(Protocol):
    """The token ids the loop needs: a :class:`~capkit.runtime.vocab.Vocabulary` is one."""

    start_id: int
    end_id: int


@dataclass(frozen=True)
class TokenIds:
    """Special ids without a vocabulary (tests, tools)."""

    start_id: int
    end_id: int


class DecodingOptionsError(CapkitError):
    """An option outside its range; the message names it."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _checked(name: str, value: Any, spec: dict[str, Any]) -> Any:
    """One option's value checked against its field's ``kind`` and range; as a plain Python number."""
    label = name.replace("_", "-")
    if spec["kind"] is int:
        if not is_int(value):
            raise DecodingOptionsError(f"{label} must be an integer, got {value!r}")
        if spec["minimum"] is not None and value < spec["minimum"]:
            raise DecodingOptionsError(f"{label} must be an integer >= {spec['minimum']:g}, got {value}")
        return int(value)
    if not _is_number(value):
        raise DecodingOptionsError(f"{label} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float (10**400)
        raise DecodingOptionsError(f"{label} must be a finite number, got an integer of {len(str(value))} "
                                   f"digits") from None
    if spec["minimum"] is not None and not (math.isfinite(number) and number >= spec["minimum"]):
        raise DecodingOptionsError(f"{label} must be a finite number >= {spec['minimum']:g}, got {value}")
    if spec["maximum"] is not None and not (spec["above"] < number <= spec["maximum"]):
        raise DecodingOptionsError(f"{label} must be in ({spec['above']:g}, {spec['maximum']:g}], got {value}")
    return number


def verify_options(options: DecodingOptions, limits: Limits = DEFAULT_LIMITS) -> DecodingOptions:
    """Checks every option once, before any work: types, ranges and ``limits`` (max_length, beam), as each
    field of :class:`DecodingOptions` declares them. Returns them with plain Python numbers (numpy scalars
    converted); raises DecodingOptionsError or LimitError with one line naming the option."""
    values = {}
    for f in fields(DecodingOptions):
        value = getattr(options, f.name)
        values[f.name] = None if value is None and f.default is None else _checked(f.name, value, f.metadata)
        if f.metadata["limit"] is not None:
            limits.check(f.metadata["limit"], values[f.name], f.name.replace("_", "-"))
    checked = DecodingOptions(**values)
    if checked.beam > 1 and (checked.temperature > 0 or checked.top_k or checked.top_p):
        raise DecodingOptionsError("beam search is deterministic: use it with temperature 0 and no top-k/top-p")
    return checked


def with_overrides(base: DecodingOptions, overrides: dict[str, Any]) -> DecodingOptions:
    """``base`` with each override that is not None; a sampling option given without ``beam`` replaces a
    beam-search base as a whole (``temperature=0.7`` on a bundle whose default is beam search samples).
    Unknown names raise TypeError, as a wrong keyword argument does. Not checked: see :func:`verify_options`."""
    unknown = sorted(set(overrides) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"unknown decoding option {unknown[0]!r} (known: {', '.join(OPTION_NAMES)})")
    given = {name: value for name, value in overrides.items() if value is not None}
    if given.keys() & set(SAMPLING_OPTIONS) and "beam" not in given:
        base = dataclasses.replace(base, beam=1)
    return dataclasses.replace(base, **given)


def check_given_options(limits: Limits = DEFAULT_LIMITS, **given: Any) -> None:
    """The options a caller gave (None: left to a model's defaults), checked on their own, so that a bad
    one is reported before a model is loaded; the combination with the defaults is checked again
    once they are known (``Captioner.options``)."""
    verify_options(with_overrides(DecodingOptions(), given), limits)


INITIAL_COLUMNS = 64  # SamplingDecoder's token columns at first: max_length costs memory only as it is used


class TokenDecoder(Protocol):
    greedy: bool  # True when the next token is argmax(logits): the loop may then feed advance() the
    # inference's own greedy choice (GreedyInference.greedy_step) instead of calling update() with logits

    def start(self, batch: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """First tokens (B',) and the state rows to select for them (None: keep as encoded)."""

    def update(self, logits: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Chooses the next tokens from logits (B', V); returns them and the state rows that continue (None: all)."""

    def advance(self, chosen: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Records tokens already chosen (int64 (B',)) with their log-probabilities (float64 (B',)), as
        update() does after choosing; only called when ``greedy``."""

    def advance_masked(self, chosen: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, None]:
        """advance() for a batch that keeps its finished rows (an inference whose ``mask_finished_rows``
        is true): ``chosen``, ``logprobs`` have one row per image (B,); only the rows still decoding are
        recorded. Returns ``chosen`` itself while any row goes on (every row steps on), else no tokens."""

    def finish(self) -> list[DecodingResult]:
        """One result per image, in input order."""


@dataclass
class SamplingDecoder:
    """Greedy (temperature 0, or top-k 1) or temperature sampling; finished rows leave the batch at once.

    Per step the work is a few vectorised numpy operations on (B',) arrays: the generated tokens
    go into one preallocated (B, max_length) array, not into Python lists.
    """

    start_id: int
    end_id: int
    options: DecodingOptions
    filters: Sequence[LogitFilter] = ()
    _active: np.ndarray = field(init=False)  # (B',) the image index of each row still decoding
    _generated: np.ndarray = field(init=False)  # (B, max_length) the chosen tokens, by step
    _lengths: np.ndarray = field(init=False)  # (B,) tokens before <end>; -1 while still decoding
    _step: int = field(init=False)
    _logprobs: np.ndarray = field(init=False)  # (B, max_length) each chosen token's log-probability, by step
    _rngs: list[np.random.Generator] = field(init=False)

    @property
    def greedy(self) -> bool:
        """Whether the choice is argmax(logits) (:attr:`DecodingOptions.greedy`), so that an inference's
        ``greedy_step`` can make it."""
        return self.options.greedy

    def start(self, batch: int) -> tuple[np.ndarray, None]:
        self._active = np.arange(batch)
        columns = min(self.options.max_length, INITIAL_COLUMNS)  # grown by advance() when a caption runs on
        self._generated = np.zeros((batch, columns), dtype=np.int64)
        self._lengths = np.full(batch, -1, dtype=np.int64)
        self._step = 0
        self._logprobs = np.zeros((batch, columns))
        if not self.greedy:
            seeds = ([self.options.seed] * batch if self.options.seed is not None
                     else np.random.SeedSequence().spawn(batch))
            self._rngs = [np.random.default_rng(s) for s in seeds]
        return np.full(batch, self.start_id, dtype=np.int64), None

    def update(self, logits: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        if self.greedy:
            return self.advance(*greedy_from_logits(logits))
        scores = scaled_scores(logits, self.options.temperature)  # (B', V)
        for logit_filter in self.filters:
            logit_filter.apply(scores)
        uniforms = np.array([self._rngs[i].random() for i in self._active])  # (B',)
        chosen = sample_from_scores(scores, uniforms)  # (B',)
        return self.advance(chosen, chosen_log_softmax(logits, chosen))

    def advance(self, chosen: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Records this step's tokens (int64 (B',)) and their log-probabilities (B',); returns the tokens
        that continue and the rows they continue from (None: all)."""
        active, step = self._active, self._step
        if step == self._generated.shape[1]:  # a longer caption than the columns so far: double them
            self._generated = np.concatenate([self._generated, np.zeros_like(self._generated)], axis=1)
            self._logprobs = np.concatenate([self._logprobs, np.zeros_like(self._logprobs)], axis=1)
        if len(active) == len(self._lengths):  # no row has finished: whole columns, no index arrays
            self._generated[:, step] = chosen
            self._logprobs[:, step] = logprobs  # summed once, in finish (an add per step costs more)
        else:
            self._generated[active, step] = chosen
            self._logprobs[active, step] = logprobs
        self._step = step + 1
        # A scan of a short Python list: at batch 1 a numpy reduction (``(chosen == end).any()``)
        # costs a few microseconds more per step, once the step graph has left the caches cold.
        if self.end_id not in chosen.tolist():
            return chosen, None
        done = chosen == self.end_id  # (B',)
        self._lengths[active[done]] = step
        keep = np.flatnonzero(~done)  # (B'',)
        self._active = active[keep]
        return chosen[keep], keep

    def advance_masked(self, chosen: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, None]:
        active = self._active
        if len(active) == len(self._lengths):  # no row has finished yet
            self.advance(chosen, logprobs)
        else:
            self.advance(chosen[active], logprobs[active])  # (B',)
        return (chosen if len(self._active) else chosen[:0]), None

    def finish(self) -> list[DecodingResult]:
        # Python lists, not numpy reductions: a few rows, and this runs once per batch in cold caches.
        results = []
        for row, logprobs, end in zip(self._generated.tolist(), self._logprobs.tolist(), self._lengths.tolist()):
            n = end if end >= 0 else self._step  # tokens before <end>
            results.append(DecodingResult(tuple(row[:n]), sum(logprobs[: n + (end >= 0)]), end >= 0))  # <end> counts
        return results


@dataclass
class BeamSearchDecoder:
    """Beam search with the beams of every image as rows of one batch; an image leaves the
    batch once a finished hypothesis scores at least as well as all its live beams. The best by
    summed log-probability wins."""

    start_id: int
    end_id: int
    beam_size: int
    greedy = False  # a beam's choice is not argmax(logits): the loop calls update()
    _images: np.ndarray = field(init=False)  # (G,) image index of each group still searching
    _scores: np.ndarray = field(init=False)  # (G * N,) summed log-probabilities of the live beams
    _sequences: list[list[int]] = field(init=False)  # (G * N) token lists of the live beams
    _done: list[list[tuple[float, tuple[int, ...], bool]]] = field(init=False)

    def start(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.beam_size
        self._images = np.arange(batch)
        self._scores = np.tile(np.r_[0.0, np.full(n - 1, -np.inf)], batch)  # only beam 0 is live at first
        self._sequences = [[] for _ in range(batch * n)]
        self._done = [[] for _ in range(batch)]
        return np.full(batch * n, self.start_id, dtype=np.int64), np.repeat(np.arange(batch), n)

    def update(self, logits: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        n, vocab = self.beam_size, logits.shape[-1]
        candidates = (self._scores[:, None] + log_softmax(logits)).reshape(len(self._images), n * vocab)  # (G, N*V)
        best = np.argsort(-candidates, axis=-1, kind="stable")[:, : 2 * n]  # (G, 2N)
        tokens, rows, scores, sequences, groups = [], [], [], [], []
        for g, image in enumerate(self._images):
            kept = 0
            for rank, flat in enumerate(best[g]):
                score = float(candidates[g, flat])
                if score == -np.inf:
                    break
                row, token = g * n + flat // vocab, int(flat % vocab)
                if token == self.end_id:
                    if rank < n:  # an ending only counts among the N best candidates (so beam 1 is greedy)
                        self._done[image].append((score, tuple(self._sequences[row]), True))
                elif kept < n:
                    kept += 1
                    tokens.append(token)
                    rows.append(row)
                    scores.append(score)
                    sequences.append(self._sequences[row] + [token])
            # Scores only fall as a sequence grows: once a finished hypothesis scores at least as
            # well as every live beam, none can beat it, so this image is done (drop its beams).
            # (Stopping at N finished ones instead can drop a far better live beam.)
            live_best = max(scores[len(scores) - kept:], default=-np.inf)
            if kept == 0 or max((h[0] for h in self._done[image]), default=-np.inf) >= live_best:
                del tokens[len(tokens) - kept:], rows[len(rows) - kept:], scores[len(scores) - kept:]
                del sequences[len(sequences) - kept:]
            else:
                groups.append(image)
                while kept < n:  # pad a group whose live candidates ran short with dead beams
                    kept += 1
                    tokens.append(self.end_id)
                    rows.append(g * n)
                    scores.append(-np.inf)
                    sequences.append([])
        self._images = np.asarray(groups, dtype=np.int64)
        self._scores = np.asarray(scores, dtype=np.float64)
        self._sequences = sequences
        return np.asarray(tokens, dtype=np.int64), np.asarray(rows, dtype=np.int64)

    def advance(self, chosen: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        raise NotImplementedError("beam search chooses from logits: the loop calls update()")

    advance_masked = advance

    def finish(self) -> list[DecodingResult]:
        n = self.beam_size
        for g, image in enumerate(self._images):  # max length reached: live beams count as unfinished
            for b in range(n):
                if self._scores[g * n + b] > -np.inf:
                    self._done[image].append((float(self._scores[g * n + b]), tuple(self._sequences[g * n + b]), False))
        results = []
        for hypotheses in self._done:
            score, tokens, finished = max(hypotheses, key=lambda h: h[0])
            results.append(DecodingResult(tokens, score, finished))
        return results


def build_decoder(options: DecodingOptions, ids: SpecialIds) -> TokenDecoder:
    if options.beam > 1:
        return BeamSearchDecoder(ids.start_id, ids.end_id, options.beam)
    filters: list[LogitFilter] = []
    if options.top_k is not None:
        filters.append(TopK(int(options.top_k)))
    if options.top_p is not None:
        filters.append(TopP(float(options.top_p)))
    return SamplingDecoder(ids.start_id, ids.end_id, options, filters)


def decode(inference: Inference, images: np.ndarray, options: DecodingOptions, ids: SpecialIds, *,
           decoder: Optional[TokenDecoder] = None, limits: Limits = DEFAULT_LIMITS) -> list[DecodingResult]:
    """Captions a batch of preprocessed images (float32 (B, 3, H, W)); one result per image, in order.
    ``ids``: the start and end ids (a Vocabulary, or :class:`TokenIds`).

    When the decoder's choice is greedy and the inference has a ``greedy_step`` (:class:`GreedyInference`),
    the greedy token and its log-probability come from the inference (e.g. the step graph's
    ``next_token`` output), not from the logits. When such an inference also says
    ``mask_finished_rows``, finished rows stay in the batch (their tokens not recorded) and the
    tokens it returned go back to it as they are, so the batch keeps one shape to the end.
    """
    options = verify_options(options, limits)
    decoder = decoder or build_decoder(options, ids)
    greedy_step = getattr(inference, "greedy_step", None) if decoder.greedy else None
    advance = decoder.advance_masked if greedy_step is not None and getattr(inference, "mask_finished_rows", False) \
        else decoder.advance
    state = inference.encode(images)
    tokens, rows = decoder.start(len(images))
    if rows is not None:
        state = inference.select(state, rows)
    for _ in range(options.max_length):
        if greedy_step is not None:
            chosen, logprobs, state = greedy_step(tokens, state)
            tokens, rows = advance(chosen, logprobs)
        else:
            logits, state = inference.step(tokens, state)
            tokens, rows = decoder.update(logits)
        if len(tokens) == 0:
            break
        if rows is not None:
            state = inference.select(state, rows)
    results = decoder.finish()
    if not all(math.isfinite(r.logprob) for r in results):  # NaN from a greedy_step (the logits are checked)
        raise LogitsError(NOT_FINITE)
    return results


__all__ = [
    "OPTION_NAMES", "BeamSearchDecoder", "DecodingOptions", "DecodingOptionsError", "DecodingResult", "GreedyInference",
    "Inference", "LogitFilter", "LogitsError", "SamplingDecoder", "SpecialIds", "TokenDecoder", "TokenIds", "TopK",
    "TopP", "build_decoder", "check_given_options", "chosen_log_softmax", "decode", "greedy_from_logits", "log_softmax",
    "option", "sample_from_scores", "verify_options", "with_overrides",
]
