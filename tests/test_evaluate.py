"""Tests for ds9_utils.evaluate: line kinds, the format report, copy detection and bits per character."""

from __future__ import annotations

import math
import random

import pytest
import torch

from ds9_utils.evaluate import (
    SuffixIndex,
    _score_windows,
    bits_per_character,
    classify_line,
    line_losses,
    longest_copied_substring,
    real_words_share,
    scene_format_report,
    speaker_counts,
    token_losses,
    words,
)
from ds9_utils.model import GPT, BigramLanguageModel, GPTConfig

# ---------------------------------------------------------------------------------------------- line kinds


@pytest.mark.parametrize(
    "line, kind, speaker",
    [
        ("SISKO: Report to Ops.", "speaker", "SISKO"),
        ("O'BRIEN: (under the console) Uh-huh. Try it now. ", "speaker", "O'BRIEN"),
        ("KIRA [OC]: Kira to Sisko.", "speaker", "KIRA"),
        ("DUKAT [on monitor]: Commander.", "speaker", "DUKAT"),
        ("MAN 2: Hey!", "speaker", "MAN 2"),
        ("(Odo leaves)", "direction", None),
        ("(Quark selects two rods (red ones) and inserts them.)", "direction", None),
        ("[Quark's]", "heading", None),
        ("  [Ops]  ", "heading", None),
        ("Sisko: lower-case names are not the format", "malformed", None),
        ("SISKO:no space after the colon", "malformed", None),
        ("SISKO: ", "malformed", None),
        ("the rest of a line that was wrapped", "malformed", None),
        ("(an unclosed direction", "malformed", None),
        ("[Ops] KIRA: two things on one line", "malformed", None),
    ],
)
def test_classify_line(line, kind, speaker):
    info = classify_line(line)
    assert (info.kind, info.speaker) == (kind, speaker)


SCENE = """[Quark's]
ODO: Tell me, Quark, is business a little slow today?
QUARK: Slow? It's been almost nonexistent.
(Odo leaves)
ZORBLAX: I am an invented speaker.
QUARK [OC]: Computer, display a station layout.
this line is broken

"""


def test_scene_format_report_counts_kinds_and_known_speakers():
    report = scene_format_report(SCENE, known_speakers={"ODO", "QUARK", "SISKO"})
    assert report["lines"] == 7  # the empty line is skipped
    assert (report["speaker"], report["direction"], report["heading"], report["malformed"]) == (4, 1, 1, 1)
    assert report["well_formed_fraction"] == pytest.approx(6 / 7)
    assert report["speaker_fraction"] == pytest.approx(4 / 7)
    assert report["speakers"] == {"QUARK": 2, "ODO": 1, "ZORBLAX": 1}
    assert report["known_speaker_fraction"] == pytest.approx(3 / 4)
    assert report["known_name_fraction"] == pytest.approx(2 / 3)
    assert report["unknown_speakers"] == ["ZORBLAX"]


def test_scene_format_report_drops_a_cut_off_last_line():
    cut = "ODO: Complete line.\nQUARK: cut off in the mid"
    assert scene_format_report(cut, {"ODO"})["lines"] == 1
    assert scene_format_report(cut, {"ODO"}, drop_last_line=False)["lines"] == 2
    assert scene_format_report(cut + "\n", {"ODO"})["lines"] == 2


def test_scene_format_report_of_nothing_is_nan_not_an_error():
    report = scene_format_report("", known_speakers=[])
    assert report["lines"] == 0
    assert math.isnan(report["well_formed_fraction"]) and math.isnan(report["known_speaker_fraction"])


def test_speaker_counts():
    assert speaker_counts(SCENE) == {"QUARK": 2, "ODO": 1, "ZORBLAX": 1}


# ---------------------------------------------------------------------------------------------- copying


def brute_force_longest_copy(generated: str, training: str) -> tuple[int, str]:
    best = (0, "")
    for i in range(len(generated)):
        for j in range(i + 1, len(generated) + 1):
            if generated[i:j] in training and j - i > best[0]:
                best = (j - i, generated[i:j])
    return best


def random_text(rng: random.Random, length: int, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def test_longest_copied_substring_matches_brute_force_on_small_strings():
    rng = random.Random(0)
    for trial in range(300):
        alphabet = "ab" if trial % 3 == 0 else "abc d\n"
        training = random_text(rng, rng.randint(0, 60), alphabet)
        generated = random_text(rng, rng.randint(0, 25), alphabet + "z")
        expected = brute_force_longest_copy(generated, training)
        assert longest_copied_substring(generated, training) == expected, (generated, training)
        assert longest_copied_substring(generated, SuffixIndex(training)) == expected, (generated, training)
        assert longest_copied_substring(generated, SuffixIndex(training, max_prefix=2)) == expected


def test_longest_copied_substring_finds_a_planted_quote():
    rng = random.Random(1)
    training = random_text(rng, 20_000, "abcdefgh ")
    quote = training[12_345 : 12_345 + 60]
    generated = random_text(rng, 200, "xyz") + quote + random_text(rng, 200, "xyz")
    for source in (training, SuffixIndex(training)):
        length, substring = longest_copied_substring(generated, source)
        assert length >= 60 and quote in substring and substring in training


def test_longest_copied_substring_edge_cases():
    assert longest_copied_substring("", "anything") == (0, "")
    assert longest_copied_substring("xyz", "abc") == (0, "")
    assert longest_copied_substring("abc", "abc") == (3, "abc")
    assert longest_copied_substring("café au lait", "un café noir") == (5, "café ")


def test_suffix_index_is_sorted_and_searches_like_str_find():
    rng = random.Random(2)
    text = random_text(rng, 3_000, "abcé\n ")
    index = SuffixIndex(text)
    suffixes = [text[int(start) :] for start in index.suffixes]
    assert suffixes == sorted(suffixes) and sorted(index.suffixes.tolist()) == list(range(len(text)))
    for _ in range(300):
        start = rng.randrange(len(text))
        query = text[start : start + rng.randint(1, 12)] if rng.random() < 0.5 else random_text(rng, 6, "abcé")
        assert index.contains(query) == (query in text)
        position = index.find(query)
        assert (position == -1) == (query not in text)
        if position != -1:
            assert text[position : position + len(query)] == query


def test_suffix_index_of_a_repetitive_text():
    text = "abab" * 500  # every suffix shares long prefixes: many doubling rounds
    index = SuffixIndex(text, max_prefix=4096)
    assert [text[int(s) :] for s in index.suffixes] == sorted(text[i:] for i in range(len(text)))
    assert longest_copied_substring("xx" + "ab" * 30 + "x", index) == (60, "ab" * 30)
    assert SuffixIndex("").contains("a") is False


# ---------------------------------------------------------------------------------------------- compression


@pytest.mark.parametrize(
    "n_targets, block_size, stride", [(1, 4, 4), (4, 4, 4), (10, 4, 4), (11, 4, 2), (37, 8, 3), (9, 8, 1), (100, 7, 7)]
)
def test_windows_score_every_target_once_with_enough_context(n_targets, block_size, stride):
    scored = []
    for index, (start, skip) in enumerate(_score_windows(n_targets, block_size, stride)):
        length = min(block_size, n_targets)
        assert 0 <= start and start + length <= n_targets
        if index > 0:
            assert skip >= block_size - stride or start == n_targets - block_size
        scored.extend(range(start + skip, start + length))
    assert scored == list(range(n_targets))


def tiny_gpt(block_size: int = 8) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=block_size, n_layer=1, n_head=2, n_embd=16))


def test_token_losses_agree_with_the_models_own_loss_inside_one_window():
    model = tiny_gpt()
    tokens = torch.randint(0, 11, (9,), generator=torch.Generator().manual_seed(0))
    _, loss = model(tokens[None, :-1], tokens[None, 1:])
    losses = token_losses(model, tokens, block_size=8)
    assert losses.shape == (8,)
    assert losses.mean().item() == pytest.approx(loss.item(), rel=1e-5)


def test_token_losses_with_stride_one_is_the_full_context_score():
    model = tiny_gpt(block_size=8)
    tokens = torch.randint(0, 11, (40,), generator=torch.Generator().manual_seed(1))
    losses = token_losses(model, tokens, block_size=8, stride=1, batch_size=5)
    for j in range(len(tokens) - 1):  # predict tokens[j + 1] from the (up to) 8 tokens ending at j
        context = tokens[max(0, j - 7) : j + 1]
        logits, _ = model(context[None])
        expected = torch.nn.functional.cross_entropy(logits[0, -1:], tokens[j + 1 : j + 2])
        assert losses[j].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)


def test_token_losses_by_default_give_every_prediction_half_a_window_of_context():
    """The default stride is fair to the model: past the first window, each prediction sees >= block_size / 2."""
    model = tiny_gpt(block_size=8)
    tokens = torch.randint(0, 11, (50,), generator=torch.Generator().manual_seed(2))
    default = token_losses(model, tokens, block_size=8)
    assert torch.equal(default, token_losses(model, tokens, block_size=8, stride=4))
    assert not torch.allclose(default, token_losses(model, tokens, block_size=8, stride=8))
    for j in range(8, len(tokens) - 1):  # predict tokens[j + 1] from the window the default scored it in
        starts = [start for start, skip in _score_windows(len(tokens) - 1, 8, 4) if start + skip <= j < start + 8]
        assert len(starts) == 1 and j - starts[0] + 1 >= 4


def test_bits_per_character_of_an_untrained_bigram_is_about_log2_vocab():
    model = BigramLanguageModel(20)
    torch.nn.init.zeros_(model.token_embedding_table.weight)  # uniform predictions
    tokens = torch.randint(0, 20, (500,), generator=torch.Generator().manual_seed(2))
    assert bits_per_character(model, tokens, block_size=16) == pytest.approx(math.log2(20), rel=1e-6)
    assert bits_per_character(model, tokens, block_size=16, stride=5) == pytest.approx(math.log2(20), rel=1e-6)


def test_token_losses_keeps_the_models_mode_and_checks_arguments():
    model = tiny_gpt()
    model.train()
    token_losses(model, [1, 2, 3, 4], block_size=8)
    assert model.training
    with pytest.raises(ValueError):
        token_losses(model, [1], block_size=8)
    with pytest.raises(ValueError):
        token_losses(model, [1, 2, 3], block_size=8, stride=9)


def test_line_losses_splits_per_character_losses_by_line():
    text = "[Ops]\nKIRA: Hi.\n(She leaves)"
    losses = torch.arange(len(text) - 1, dtype=torch.float32) * math.log(2)  # character c costs c - 1 bits
    rows = line_losses(text, losses)
    assert [row["kind"] for row in rows] == ["heading", "speaker", "direction"]
    assert rows[1]["speaker"] == "KIRA"
    # "[Ops]\n" is characters 0..5, of which 1..5 are scored, costing 0..4 bits: mean 2
    assert rows[0]["characters"] == 5 and rows[0]["bits"] == pytest.approx(2.0)
    # "KIRA: Hi.\n" is characters 6..15, costing 5..14 bits: mean 9.5
    assert rows[1]["characters"] == 10 and rows[1]["bits"] == pytest.approx(9.5)
    assert rows[2]["characters"] == len("(She leaves)")
    with pytest.raises(ValueError):
        line_losses(text, losses[:-1])


def test_real_words_share_counts_the_words_found_in_the_known_text():
    training = "SISKO: Report to Ops, Major. O'BRIEN: The station's shields are holding at twenty-four percent."
    assert words("O'Brien's station, twenty-four!") == ["o'brien's", "station", "twenty-four"]
    assert real_words_share("Sisko: the shields are holding.", training) == 1.0
    assert real_words_share("KIRA: The qualinions shields holds.", training) == pytest.approx(2 / 5)
    assert real_words_share("SISKO: The station.", ["sisko", "The"]) == pytest.approx(2 / 3)
    assert real_words_share("?!", training) == 0.0
