"""Byte-level BPE: exact round trips, the same merges as the textbook trainer, special tokens, files, errors."""

import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ds9_utils.checkpoints import load_checkpoint, save_checkpoint
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.tokenizers import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    learn_bpe_merges,
    merge_pair,
    textbook_bpe_merges,
)
from ds9_utils.train_config import TrainConfig

SCENE = """[Ops]
SISKO: Old man, it's good to see you. Constable, we'll need three hundred and 47 runabouts.
O'BRIEN: Cardassian ships, Captain! They're coming about. Shields at 80%.
KIRA: I've told you before, Odo: I don't trust Quark. Nobody does.
ODO: Neither do I, Major. (Odo shifts into a bucket) _Quark's_ bar... QUARK'S BAR!
GARAK: Doctor, you'd be amazed at what a Cardassian tailor overhears. #1: "Once you have their money..."
DAX: Benjamin -- Curzon would've loved this. Kira Nerys, Jadzia Dax, Keiko O'Brien.

"""
END_OF_SCENE = "<|end of scene|>"
# Any Python string: every Unicode character, including lone surrogates (category Cs), which a str may hold.
ANY_TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=80)


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, BPETokenizer]:
    unicode_text = SCENE + "Kira Nerys — 琪拉·娜莉丝 🖖🖖 ½ café café naïve Ωmega\t\r\n" * 3
    return {
        "gpt4": BPETokenizer(special_tokens=[END_OF_SCENE]).train(SCENE * 4 + unicode_text, 400),
        "gpt2": BPETokenizer(pattern=GPT2_SPLIT_PATTERN).train(unicode_text, 350),
        "whole text": BPETokenizer(pattern=None).train(unicode_text, 330),
    }


def test_the_wikipedia_example():
    # aaabdaaabac: "aa" is merged first, then "ab" (tied with (256, 97) at 2; the smaller pair wins), then "aaab".
    tokenizer = BPETokenizer(pattern=None).train("aaabdaaabac", 259)
    assert list(tokenizer.merges) == [(97, 97), (97, 98), (256, 257)]
    assert tokenizer.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tokenizer.vocab[258] == b"aaab"
    assert tokenizer.vocab_size == 259


def test_merge_pair_scans_left_to_right():
    assert merge_pair([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge_pair([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge_pair([1], (1, 2), 9) == [1]


@pytest.mark.parametrize("pattern", [GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN, None])
def test_fast_and_textbook_trainers_learn_the_same_merges(pattern):
    text = SCENE * 3 + "aaaa abab ababab 1111 ...!!! \n\n\n  \t  zzzzzz"  # repeats and overlaps, and many ties
    expected = textbook_bpe_merges(text, 200, pattern)
    tokenizer = BPETokenizer(pattern=pattern).train(text, 256 + 200)
    assert list(tokenizer.merges) == expected
    assert len(expected) == 200


def test_training_stops_when_no_pair_is_left():
    tokenizer = BPETokenizer().train("ab ab", 1000)
    assert tokenizer.decode(tokenizer.encode("ab ab")) == "ab ab"
    assert tokenizer.encode("ab ab") == [256, 257]  # "ab" and " ab": one token each, nothing left to merge
    assert len(tokenizer.merges) == len(textbook_bpe_merges("ab ab", 1000)) == 2


def test_the_fast_trainer_counts_each_distinct_piece_once():
    merges = learn_bpe_merges({b"ab": 5, b"bc": 3, b"abc": 2}, 10)
    # (a, b) occurs 5 + 2 = 7 times, (b, c) 3 + 2 = 5; after "ab" only (ab, c) in "abc" is left, twice.
    assert merges == [(97, 98), (98, 99), (256, 99)]


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT)
def test_any_string_round_trips(tokenizers, text):
    for tokenizer in tokenizers.values():
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(tokenizer.encode(text, allowed_special="all")) == text


@settings(max_examples=100, deadline=None)
@given(ANY_TEXT)
def test_the_split_patterns_keep_every_character(text):
    for pattern in (GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN):
        assert "".join(re.findall(pattern, text)) == text


def test_the_split_patterns_match_the_originals_on_letters_digits_and_punctuation():
    regex = pytest.importorskip("regex")  # the third-party module that understands \p{L}
    originals = {
        GPT2_SPLIT_PATTERN: r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        GPT4_SPLIT_PATTERN: (
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}"""
            r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
        ),
    }
    text = SCENE + "Kira Nerys — 琪拉·娜莉丝 🖖 café naïve Ωmega 12345 x_y __init__ I'LL WE'RE\t\r\n  \n"
    for ours, original in originals.items():
        assert re.findall(ours, text) == regex.findall(original, text)


def test_the_pre_split_keeps_names_whole():
    pieces = re.findall(GPT4_SPLIT_PATTERN, "O'BRIEN: Cardassian ships, we'll need 300!\n")
    assert pieces == ["O", "'BRIEN", ":", " Cardassian", " ships", ",", " we", "'ll", " need", " ", "300", "!\n"]


def test_special_tokens_come_after_the_merges(tokenizers):
    tokenizer = tokenizers["gpt4"]
    assert tokenizer.special_tokens == {END_OF_SCENE: 256 + len(tokenizer.merges)}
    assert tokenizer.vocab_size == 400


def test_ordinary_text_cannot_produce_a_special_token(tokenizers):
    tokenizer = tokenizers["gpt4"]
    special_id = tokenizer.special_tokens[END_OF_SCENE]
    text = SCENE + END_OF_SCENE + "[Promenade]\n"
    assert special_id not in tokenizer.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text
    with_special = tokenizer.encode(text, allowed_special={END_OF_SCENE})
    assert with_special.count(special_id) == 1
    assert with_special == tokenizer.encode(SCENE) + [special_id] + tokenizer.encode("[Promenade]\n")
    assert tokenizer.decode([special_id]) == END_OF_SCENE


@settings(max_examples=100, deadline=None)
@given(ANY_TEXT, ANY_TEXT)
def test_no_text_produces_a_special_id(tokenizers, before, after):
    tokenizer = tokenizers["gpt4"]
    assert tokenizer.special_tokens[END_OF_SCENE] not in tokenizer.encode(before + END_OF_SCENE + after)


@settings(max_examples=100, deadline=None)
@given(ANY_TEXT)
def test_encoding_applies_every_merge_in_the_order_learned(tokenizers, text):
    # What training did to each piece of its text: every merge, in order, everywhere it applies.
    for tokenizer in tokenizers.values():
        expected = []
        for piece in re.findall(tokenizer.pattern, text) if tokenizer.pattern else [text] if text else []:
            ids = list(piece.encode("utf-8", "surrogatepass"))
            for pair, new_id in tokenizer.merges.items():
                ids = merge_pair(ids, pair, new_id)
            expected += ids
        assert tokenizer.encode(text) == expected


def test_decode_accepts_a_tensor_and_repairs_broken_utf8(tokenizers):
    tokenizer = tokenizers["gpt4"]
    assert tokenizer.decode(torch.tensor(tokenizer.encode("Quark's"))) == "Quark's"
    first_byte_of_a_cafe_accent = "é".encode()[:1][0]
    assert tokenizer.decode([first_byte_of_a_cafe_accent, ord("x")]) == "\ufffdx"


def test_render_token_is_printable(tokenizers):
    tokenizer = tokenizers["gpt4"]
    assert tokenizer.render_token(ord("\n")) == "\\n"
    assert tokenizer.render_token(ord("a")) == "a"
    assert all(tokenizer.render_token(i).isprintable() for i in range(tokenizer.vocab_size))


@pytest.mark.parametrize("name", ["gpt4", "gpt2", "whole text"])
def test_save_and_load_round_trip(tmp_path, tokenizers, name):
    tokenizer = tokenizers[name]
    path = tokenizer.save(tmp_path / "nested" / "bpe.json")
    assert [p.name for p in path.parent.iterdir()] == ["bpe.json"]  # no temporary file left behind
    for loader in (BPETokenizer.load, Tokenizer.load):
        loaded = loader(path)
        assert isinstance(loaded, BPETokenizer)
        assert loaded.merges == tokenizer.merges
        assert loaded.pattern == tokenizer.pattern
        assert loaded.special_tokens == tokenizer.special_tokens
        assert loaded.encode(SCENE, allowed_special="all") == tokenizer.encode(SCENE, allowed_special="all")


def test_the_file_is_readable_json_with_one_merge_per_line(tmp_path, tokenizers):
    tokenizer = tokenizers["gpt4"]
    path = tokenizer.save(tmp_path / "bpe.json")
    lines = path.read_text(encoding="utf-8").splitlines()
    first_merge = next(iter(tokenizer.merges.items()))
    (first, second), new_id = first_merge
    assert json.dumps([first, second, tokenizer.render_token(new_id)], ensure_ascii=False) + "," in [
        line.strip() for line in lines
    ]
    assert len(lines) > len(tokenizer.merges)  # one line each
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["special_tokens"] == {END_OF_SCENE: 256 + len(tokenizer.merges)}


def test_a_checkpoint_keeps_the_bpe_tokenizer(tmp_path, tokenizers):
    tokenizer = tokenizers["gpt2"]
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8))
    path = save_checkpoint(
        tmp_path / "model.pt",
        model=model,
        optimizer=None,
        train_config=TrainConfig(),
        step=0,
        history={},
        tokenizer=tokenizer,
    )
    loaded = load_checkpoint(path, device="cpu").tokenizer
    assert isinstance(loaded, BPETokenizer)
    assert loaded.merges == tokenizer.merges and loaded.pattern == tokenizer.pattern


def test_clear_errors(tmp_path, tokenizers):
    tokenizer = tokenizers["gpt4"]
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer(special_tokens=[END_OF_SCENE]).train(SCENE, 256)
    with pytest.raises(ValueError, match="empty text"):
        BPETokenizer().train("", 300)
    with pytest.raises(TypeError, match="read_text"):
        BPETokenizer().train(b"bytes", 300)
    with pytest.raises(ValueError, match=r"0\.\.399"):
        tokenizer.decode([400])
    with pytest.raises(ValueError, match=r"0\.\.399"):
        tokenizer.decode([-1])
    with pytest.raises(ValueError, match="not special tokens of this tokenizer"):
        tokenizer.encode("x", allowed_special={"<|unknown|>"})
    with pytest.raises(ValueError, match="'all' or a collection"):
        tokenizer.encode("x", allowed_special=END_OF_SCENE)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        BPETokenizer(pattern="(unclosed")
    with pytest.raises(ValueError, match="listed twice"):
        BPETokenizer(special_tokens=["<a>", "<a>"])
    with pytest.raises(ValueError, match="non-empty string"):
        BPETokenizer(special_tokens=[""])
    with pytest.raises(ValueError, match="earlier tokens"):
        BPETokenizer([(97, 256)])  # id 256 is the token this merge would create
    with pytest.raises(ValueError, match="repeats merge 0"):
        BPETokenizer([(97, 98), (97, 98)])


def test_loading_the_wrong_file_explains_the_problem(tmp_path, tokenizers):
    char_file = CharTokenizer.from_text("abc").save(tmp_path / "char.json")
    with pytest.raises(ValueError, match="byte-level BPE tokenizer"):
        BPETokenizer.load(char_file)
    bpe_file = tokenizers["gpt4"].save(tmp_path / "bpe.json")
    with pytest.raises(ValueError, match="character tokenizer"):
        CharTokenizer.load(bpe_file)
    data = json.loads(bpe_file.read_text(encoding="utf-8"))
    data["special_tokens"] = {END_OF_SCENE: 5}
    with pytest.raises(ValueError, match="must follow the merges"):
        BPETokenizer.from_dict(data)
