"""Word-level tokenisation and the vocabulary shared by training, export and the runtime.

Pure Python: the vocabulary is a list of words whose index is the token id, so it travels
inside a checkpoint and inside a bundle's manifest as plain JSON.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)  # the first words of every vocabulary, in this order
PAD_ID, START_ID, END_ID, UNK_ID = (SPECIAL_TOKENS.index(t) for t in (PAD, START, END, UNK))  # 0, 1, 2, 3
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 1  # the special tokens and at least one word

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; punctuation is dropped (``"A dog's toy."`` -> ``["a", "dog's", "toy"]``)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # index = token id; the first four are SPECIAL_TOKENS

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {', '.join(SPECIAL_TOKENS)}")
        if len(set(self.words)) != len(self.words):
            raise ValueError("a vocabulary must not repeat a word")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(token for caption in captions for token in tokenize(caption))
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
                      key=lambda w: (-counts[w], w))
        return cls(SPECIAL_TOKENS + tuple(kept))

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    pad_id: ClassVar[int] = PAD_ID  # the special tokens' ids, the same in every vocabulary
    start_id: ClassVar[int] = START_ID
    end_id: ClassVar[int] = END_ID
    unk_id: ClassVar[int] = UNK_ID

    def id(self, word: str) -> int:
        return self._index.get(word, self.unk_id)

    def encode(self, caption: str) -> list[int]:
        """``<start> w1 .. wn <end>`` as token ids; unknown words map to ``<unk>``."""
        return [self.start_id, *(self.id(t) for t in tokenize(caption)), self.end_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Words of ``ids`` up to the first ``<end>``, special tokens left out."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i >= len(SPECIAL_TOKENS):
                words.append(self.words[i])
        return " ".join(words)

    def special_token_ids(self) -> dict[str, int]:
        return {"pad": self.pad_id, "start": self.start_id, "end": self.end_id, "unk": self.unk_id}
