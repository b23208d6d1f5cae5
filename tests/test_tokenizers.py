import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ds9_utils.tokenizers import CharTokenizer, Tokenizer

SAMPLE = "SISKO: Old man, it's good to see you.\nDAX: Benjamin!\n\n[Ops]\n"


def test_vocabulary_is_the_sorted_unique_characters():
    tokenizer = CharTokenizer.from_text(SAMPLE)
    assert tokenizer.chars == sorted(set(SAMPLE))
    assert tokenizer.vocab_size == len(set(SAMPLE))
    assert CharTokenizer.from_text(SAMPLE[::-1]).chars == tokenizer.chars  # order of the text does not matter


def test_encode_gives_ids_in_vocabulary_order():
    tokenizer = CharTokenizer.from_text("cab")
    assert tokenizer.encode("abcba") == [0, 1, 2, 1, 0]
    assert tokenizer.decode([2, 0, 1]) == "cab"


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=sorted(set(SAMPLE)), max_size=200))
def test_round_trip(text):
    tokenizer = CharTokenizer.from_text(SAMPLE)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_decode_accepts_a_tensor():
    tokenizer = CharTokenizer.from_text(SAMPLE)
    assert tokenizer.decode(torch.tensor(tokenizer.encode("DAX"))) == "DAX"


def test_unknown_characters_are_named_in_the_error():
    tokenizer = CharTokenizer.from_text("abc\n")
    with pytest.raises(ValueError) as error:
        tokenizer.encode("abz\té")
    message = str(error.value)
    assert "'z'" in message and "'\\t'" in message and "'é'" in message
    assert "'a'" not in message
    assert "from_text" in message  # says what to do


def test_out_of_range_ids_cannot_be_decoded():
    tokenizer = CharTokenizer.from_text("abc")
    for bad in ([3], [-1]):
        with pytest.raises(ValueError, match="0..2"):
            tokenizer.decode(bad)


def test_invalid_vocabularies_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="twice"):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="single character"):
        CharTokenizer(["ab"])


def test_save_and_load_round_trip(tmp_path):
    tokenizer = CharTokenizer.from_text(SAMPLE + "é—\r")
    path = tokenizer.save(tmp_path / "nested" / "tokenizer.json")
    assert json.loads(path.read_text(encoding="utf-8"))["type"] == "char"
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temporary file left behind
    for loader in (CharTokenizer.load, Tokenizer.load):
        loaded = loader(path)
        assert isinstance(loaded, CharTokenizer)
        assert loaded.chars == tokenizer.chars
        assert loaded.encode(SAMPLE) == tokenizer.encode(SAMPLE)


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    CharTokenizer.from_text("ab").save(path)
    CharTokenizer.from_text("xyz").save(path)
    assert CharTokenizer.load(path).chars == ["x", "y", "z"]


def test_to_dict_from_dict_round_trip():
    tokenizer = CharTokenizer.from_text(SAMPLE)
    assert CharTokenizer.from_dict(tokenizer.to_dict()).chars == tokenizer.chars


def test_loading_bad_files_explains_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="from_text"):
        CharTokenizer.load(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"type": "bpe", "merges": []}))
    with pytest.raises(ValueError, match="unknown type 'bpe'"):
        Tokenizer.load(other)
    with pytest.raises(ValueError, match="character tokenizer"):
        CharTokenizer.load(other)
