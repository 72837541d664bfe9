import pytest

from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Dog's toy, on 2 MATS!") == ["a", "dog's", "toy", "on", "2", "mats"]


def test_build_orders_by_count_and_applies_min_count():
    vocab = Vocabulary.build(["a red cat", "a red dog", "a blue bird"], min_count=2)
    assert vocab.words == SPECIAL_TOKENS + ("a", "red")
    assert vocab.encode("a green cat") == [vocab.start_id, 4, vocab.unk_id, vocab.unk_id, vocab.end_id]


def test_decode_stops_at_end_and_skips_specials():
    vocab = Vocabulary.build(["a red cat"])
    ids = vocab.encode("a red cat")
    assert vocab.decode(ids) == "a red cat"
    assert vocab.decode([vocab.id("red"), vocab.end_id, vocab.id("cat")]) == "red"
    assert vocab.decode([vocab.pad_id, vocab.unk_id, vocab.id("cat")]) == "cat"


def test_round_trip_and_special_ids():
    vocab = Vocabulary.build(["one two two"])
    again = Vocabulary(tuple(list(vocab.words)))
    assert again == vocab and len(again) == 6
    assert vocab.special_token_ids() == {"pad": 0, "start": 1, "end": 2, "unk": 3}


def test_invalid_vocabularies_are_refused():
    with pytest.raises(ValueError):
        Vocabulary(("a", "b"))
    with pytest.raises(ValueError):
        Vocabulary(SPECIAL_TOKENS + ("a", "a"))
