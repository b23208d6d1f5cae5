"""Tests for ds9_utils.feedback: the rater, the losses (checked by hand), log-probs and KL, and the training loops."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ds9_utils.feedback import (
    DPOConfig,
    PreferencePair,
    RewardConfig,
    RewardModel,
    RLConfig,
    ScenePrompt,
    SceneRater,
    bradley_terry_loss,
    collect_preferences,
    completion_log_probs,
    dpo_loss,
    encode_scenes,
    kl_estimate,
    known_speakers,
    leave_one_out_advantages,
    pad_sequences,
    pairwise_accuracy,
    preference_rate,
    repeated_fraction,
    sample_completions,
    scene_prompts,
    sequence_log_probs,
    train_dpo,
    train_reinforce,
    train_reward_model,
    wilson_interval,
)
from ds9_utils.generate import generate
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.tokenizers import CharTokenizer

KNOWN = {"SISKO", "KIRA", "ODO", "QUARK", "BASHIR"}


@pytest.fixture
def rater() -> SceneRater:
    return SceneRater(KNOWN)


def tiny_gpt(vocab_size: int, block_size: int = 8, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)).eval()


# ---------------------------------------------------------------------------------------------- the rater


def test_a_good_scene_passes_every_rule(rater):
    scene = "KIRA: Where is he?\nODO: In a holding cell.\n(Kira leaves)\nQUARK: Good riddance.\n"
    rating = rater.rate(scene, "KIRA")
    assert rating.rules == {
        "well_formed": 1.0,
        "known_speakers": 1.0,
        "says_something": 1.0,
        "no_repetition": 1.0,
        "requested_speaks": 1.0,
    }
    assert rating.score == 1.0


def test_each_rule_catches_its_fault(rater):
    # One malformed line out of four complete lines; the unfinished last line is not counted.
    rating = rater.rate("KIRA: Go.\nodo says no\nODO: No.\n(Kira leaves)\nQUARK: Wai", "KIRA")
    assert rating.well_formed == pytest.approx(3 / 4)
    # Two of three speaker lines by known characters.
    assert rater.rate("KIRA: Go.\nGRONK: Why?\nODO: Now.\n").known_speakers == pytest.approx(2 / 3)
    # Of three speaker lines, two say a single word; the unfinished last line is not counted.
    assert rater.rate("KIRA: Go.\nODO: Not yet, Major.\nQUARK: Why?\nSISKO: Becau").says_something == pytest.approx(
        1 / 3
    )
    # Sisko was asked for, but only Kira speaks.
    assert rater.rate("KIRA: Go.\n", "SISKO").requested_speaks == 0.0
    # Four words repeated: trigrams (KIRA: No. KIRA:) (No. KIRA: No.) recur; 6 trigrams, 2 distinct.
    assert repeated_fraction("KIRA: No. KIRA: No. KIRA: No. KIRA: No.") == pytest.approx(1 - 2 / 6)
    assert rater.rate("KIRA: No.\nKIRA: No.\nKIRA: No.\nKIRA: No.\n").no_repetition == pytest.approx(2 / 6)


def test_a_scene_without_lines_or_speakers_scores_zero_there(rater):
    rating = rater.rate("no newline at all")
    assert rating.well_formed == 0.0 and rating.known_speakers == 0.0 and rating.says_something == 0.0
    assert rating.requested_speaks is None and "requested_speaks" not in rating.rules
    assert rater.rate("(Kira leaves)\n").known_speakers == 0.0


def test_the_judge_prefers_the_higher_score_and_shrugs_at_close_ones(rater):
    prompt = ScenePrompt("[Ops]\n(Kira enters)\n", "KIRA")
    good, bad = "KIRA: Report.\nSISKO: Nothing yet.\n", "SISKO: Report.\nblah blah\n"
    assert rater.judge(prompt, good, bad) == 0
    assert rater.judge(prompt, bad, good) == 1
    assert rater.judge(prompt, good, "KIRA: Fine.\nODO: Agreed, Major.\n") is None


def test_preference_rate_counts_ties_as_half(rater):
    prompt = ScenePrompt("[Ops]\n", "KIRA")
    good, bad = "KIRA: Report.\n", "nothing\n"
    assert preference_rate(rater.judge, [prompt] * 4, [good, good, bad, good], [bad, good, good, bad]) == 2.5 / 4
    with pytest.raises(ValueError, match="equally long"):
        preference_rate(rater.judge, [prompt], [good, good], [bad])


def test_wilson_interval_by_hand_and_at_the_edges():
    # 55.2% of 96 comparisons: by the formula, 0.552 +- about a tenth, so 0.5 lies inside.
    low, high = wilson_interval(0.552, 96)
    z = 1.96
    centre = (0.552 + z * z / 192) / (1 + z * z / 96)
    half = z / (1 + z * z / 96) * math.sqrt(0.552 * 0.448 / 96 + z * z / (4 * 96 * 96))
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert low < 0.5 < high
    assert wilson_interval(24 / 32, 32)[0] > 0.5  # 24 of 32 is more than a coin would do
    assert wilson_interval(0.0, 10)[0] == 0.0 and 0.0 < wilson_interval(0.0, 10)[1] < 0.35
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0) and wilson_interval(1.0, 10)[0] > 0.65
    narrow, wide = wilson_interval(0.6, 1000), wilson_interval(0.6, 10)
    assert wide[0] < narrow[0] < 0.6 < narrow[1] < wide[1]  # more comparisons, a narrower interval
    with pytest.raises(ValueError, match="at least one comparison"):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        wilson_interval(1.5, 10)


def test_known_speakers_and_prompts():
    text = "KIRA: a\nKIRA: b\nODO: c\n(Kira leaves)\n"
    assert known_speakers(text, min_lines=2) == {"KIRA"}
    prompts = scene_prompts(["Ops", "Quark's"], ["Kira", "O'Brien"])
    assert prompts[1] == ScenePrompt("[Ops]\n(O'Brien enters)\n", "O'BRIEN")
    assert len(prompts) == 4


def test_clear_errors_for_bad_rater_input():
    with pytest.raises(ValueError, match="known speakers"):
        SceneRater([])
    with pytest.raises(ValueError, match="needs some text"):
        ScenePrompt("")
    with pytest.raises(ValueError, match="at least one place"):
        scene_prompts([], ["Kira"])


# ---------------------------------------------------------------------------------------------- losses


def test_bradley_terry_loss_by_hand():
    # Pair 1: rewards 1 and 0 -> -log sigmoid(1) = log(1 + e^-1) = 0.31326; pair 2: equal -> log 2 = 0.69315.
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((0.313262 + 0.693147) / 2, abs=1e-5)
    # Swapping chosen and rejected makes the confident pair expensive: -log sigmoid(-1) = 1.31326.
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(1.313262, abs=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_dpo_loss_by_hand():
    # Log-ratios: chosen -1 - (-1.5) = 0.5, rejected -2 - (-1.5) = -0.5; beta 0.5 -> 0.5 * 1 = 0.5.
    # -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077.
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5)
    assert loss.item() == pytest.approx(0.474077, abs=1e-5)
    # A policy equal to the reference has no margin: log 2, whatever beta.
    same = torch.tensor([-3.0, -7.0])
    assert dpo_loss(same, same, same, same, beta=2.0).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="beta must be positive"):
        dpo_loss(same, same, same, same, beta=0.0)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(same, same[:1], same, same)


def test_leave_one_out_advantages_by_hand():
    returns = torch.tensor([[1.0, 2.0, 6.0]])
    # 1 - mean(2, 6) = -3; 2 - mean(1, 6) = -1.5; 6 - mean(1, 2) = 4.5
    assert leave_one_out_advantages(returns).tolist() == [[-3.0, -1.5, 4.5]]
    with pytest.raises(ValueError, match="two samples"):
        leave_one_out_advantages(torch.tensor([[1.0]]))


# ---------------------------------------------------------------------------------------------- log-probs and KL


def test_completion_log_probs_match_a_hand_computation():
    model = tiny_gpt(5)
    idx = torch.tensor([[1, 2, 3, 4, 0], [0, 0, 1, 1, 2]])
    logits, _ = model(idx)
    expected = logits.log_softmax(-1)[:, 1:4].gather(-1, idx[:, 2:5, None]).squeeze(-1)
    assert torch.allclose(completion_log_probs(model, idx, prompt_length=2), expected, atol=1e-6)


class RecordingModel(torch.nn.Module):
    """A model that remembers the distribution of every token ``generate`` samples."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model, self.log_probs = model, []
        self.block_size = model.block_size

    def forward(self, idx, targets=None):
        logits, loss = self.model(idx)
        self.log_probs.append(logits[:, -1].log_softmax(-1))
        return logits, loss


def test_long_completions_are_scored_from_the_window_they_were_sampled_from():
    model = tiny_gpt(6, block_size=8)
    recorder = RecordingModel(model)
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    out = generate(recorder, prompt, 20, use_cache=False, generator=torch.Generator().manual_seed(0))
    sampled = torch.stack([lp[0, token] for lp, token in zip(recorder.log_probs, out[0, 5:].tolist())])
    assert torch.allclose(completion_log_probs(model, out, prompt_length=5), sampled[None], atol=1e-5)
    # A plain last-8-tokens window would give other numbers: the rule matters.
    assert out.size(1) > model.block_size


def test_sequence_log_probs_mask_prompts_and_padding():
    model = tiny_gpt(6, block_size=16)
    rows = [[1, 2, 3, 4], [5, 4, 3, 2, 1, 0, 1]]
    idx, lengths = pad_sequences(rows)
    prompt_lengths = torch.tensor([2, 3])
    totals = sequence_log_probs(model, idx, prompt_lengths, lengths)
    for row, (tokens, p) in enumerate(zip(rows, [2, 3])):
        alone = completion_log_probs(model, torch.tensor([tokens]), p).sum()
        assert totals[row].item() == pytest.approx(alone.item(), abs=1e-5)
    # Rows longer than the context go through the windowed path and agree with it.
    short = tiny_gpt(6, block_size=4)
    long_totals = sequence_log_probs(short, idx, prompt_lengths, lengths)
    assert long_totals[1].item() == pytest.approx(
        completion_log_probs(short, torch.tensor([rows[1]]), 3).sum().item(), abs=1e-5
    )
    with pytest.raises(ValueError, match="at least one token after it"):
        sequence_log_probs(model, idx, torch.tensor([4, 3]), lengths)


def test_the_kl_estimate_averages_to_the_exact_kl():
    policy, reference = tiny_gpt(5, seed=1), tiny_gpt(5, seed=2)
    prompt = [1, 2, 3]
    # Every possible one-token continuation, weighted by how likely the policy is to sample it.
    idx = torch.tensor([prompt + [token] for token in range(5)])
    policy_logps = completion_log_probs(policy, idx, 3).squeeze(1)
    reference_logps = completion_log_probs(reference, idx, 3).squeeze(1)
    expected_estimate = (policy_logps.exp() * kl_estimate(policy_logps, reference_logps)).sum()
    p = policy(torch.tensor([prompt]))[0][0, -1].log_softmax(-1)
    q = reference(torch.tensor([prompt]))[0][0, -1].log_softmax(-1)
    exact = torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum")  # KL(p || q)
    assert expected_estimate.item() == pytest.approx(exact.item(), abs=1e-6)
    assert exact.item() > 0
    with pytest.raises(ValueError, match="same shape"):
        kl_estimate(torch.zeros(2), torch.zeros(3))


# ---------------------------------------------------------------------------------------------- models and loops


@pytest.fixture
def toy():
    """A tokenizer over a few characters and preferences for scenes with more 'a' in them."""
    tokenizer = CharTokenizer.from_text("ab\n[]")
    prompt = ScenePrompt("[a]\n")
    pairs = [
        PreferencePair(prompt, "a" * n + "b" * (6 - n), "a" * m + "b" * (6 - m)) for n in range(1, 7) for m in range(n)
    ]
    return tokenizer, prompt, pairs


def test_reward_model_starts_neutral_and_ignores_padding(toy):
    tokenizer, prompt, _ = toy
    model = RewardModel(tiny_gpt(tokenizer.vocab_size))
    assert model.score(tokenizer, [prompt], ["ab"]).tolist() == [0.0]
    torch.nn.init.normal_(model.head.weight)
    alone = model.score(tokenizer, [prompt], ["ab"])
    padded = model.score(tokenizer, [prompt, prompt], ["ab", "abababa"])
    assert padded[0].item() == pytest.approx(alone.item(), abs=1e-5)
    # Too long for the context (8): scored on the last 8 tokens.
    long = model.score(tokenizer, [prompt], ["bbbbb" + "ab[a]\na"])
    cropped = model.score(tokenizer, [ScenePrompt("bab[a]\n")], ["a"])
    assert long.item() == pytest.approx(cropped.item(), abs=1e-5)
    with pytest.raises(TypeError, match="GPT"):
        RewardModel(torch.nn.Linear(2, 2))


def test_the_reward_model_learns_the_preferences(toy):
    tokenizer, _, pairs = toy
    model = RewardModel(tiny_gpt(tokenizer.vocab_size, block_size=16))
    history = train_reward_model(
        model, tokenizer, pairs, RewardConfig(epochs=15, batch_size=8, learning_rate=3e-3), progress=False
    )
    assert history["loss"][-1] < history["loss"][0]
    assert pairwise_accuracy(model, tokenizer, pairs) >= 0.9
    with pytest.raises(ValueError, match="No preference pairs"):
        train_reward_model(model, tokenizer, [], progress=False)


def test_dpo_moves_the_policy_towards_the_chosen_scenes(toy):
    tokenizer, _, pairs = toy
    reference = tiny_gpt(tokenizer.vocab_size, block_size=16)
    policy = copy.deepcopy(reference)
    before = copy.deepcopy(reference.state_dict())
    history = train_dpo(
        policy,
        reference,
        tokenizer,
        pairs,
        DPOConfig(epochs=10, batch_size=8, beta=0.5, learning_rate=3e-3),
        progress=False,
    )
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as the reference
    assert history["loss"][-1] < 0.4 and history["accuracy"][-1] >= 0.9
    assert all(torch.equal(before[name], value) for name, value in reference.state_dict().items())
    assert all(p.requires_grad for p in reference.parameters())  # a copy of it can still be trained


def count_a(prompts, scenes):
    return [scene.count("a") / len(scene) for scene in scenes]


def test_reinforce_raises_the_reward_and_tracks_kl(toy):
    tokenizer, prompt, _ = toy
    reference = tiny_gpt(tokenizer.vocab_size, block_size=16)
    policy = tiny_gpt(tokenizer.vocab_size, block_size=16)
    config = RLConfig(
        steps=30, prompts_per_step=1, samples_per_prompt=16, max_new_tokens=8, kl_coef=0.0, learning_rate=1e-2
    )
    history = train_reinforce(
        policy, reference, tokenizer, [prompt], count_a, config, monitor=lambda p, s: float("b" in s), progress=False
    )
    assert len(history["reward"]) == len(history["kl"]) == len(history["monitor"]) == 30
    assert sum(history["reward"][-5:]) / 5 > sum(history["reward"][:5]) / 5 + 0.2
    assert history["kl"][0] == pytest.approx(0.0, abs=1e-5)  # the first samples come from the reference itself
    assert history["kl"][-1] > 0.5
    assert len(history["samples"]) == 16


def test_collect_preferences_with_any_judge(toy, rater):
    tokenizer, prompt, _ = toy
    model = tiny_gpt(tokenizer.vocab_size, block_size=16)
    first_wins = collect_preferences(
        model,
        tokenizer,
        [prompt],
        lambda p, a, b: 0,
        pairs_per_prompt=3,
        max_new_tokens=5,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert len(first_wins) == 3 and all(len(pair.chosen) == 5 for pair in first_wins)
    assert collect_preferences(model, tokenizer, [prompt], lambda p, a, b: None, max_new_tokens=5, progress=False) == []
    with pytest.raises(ValueError, match="A judge must return"):
        collect_preferences(model, tokenizer, [prompt], lambda p, a, b: "A", max_new_tokens=5, progress=False)
    assert len(sample_completions(model, tokenizer, "[", 2, 3)) == 2


def test_clear_errors_for_bad_configs_and_inputs(toy):
    tokenizer, prompt, _ = toy
    with pytest.raises(ValueError, match="samples_per_prompt must be at least 2"):
        RLConfig(samples_per_prompt=1)
    with pytest.raises(ValueError, match="beta > 0"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="pair up"):
        encode_scenes(tokenizer, [prompt], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        pad_sequences([[1], []])
    with pytest.raises(ValueError, match="prompt_length"):
        completion_log_probs(tiny_gpt(5), torch.tensor([[1, 2]]), prompt_length=2)
