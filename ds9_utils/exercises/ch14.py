"""Chapter 14's exercises: DPO's implicit reward, scenes that break one rule, the rater as the reward, the DPO
loss."""

from __future__ import annotations

import torch

from ds9_utils.exercises import Exercise, close_problem, number_problem, register, typical_mistake
from ds9_utils.feedback import RLConfig, ScenePrompt, SceneRater, encode_scenes, sequence_log_probs, train_reinforce
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.tokenizers import CharTokenizer

MAIN_CHARACTERS = ("SISKO", "KIRA", "ODO", "QUARK", "BASHIR", "DAX", "O'BRIEN", "WORF", "JAKE", "NOG", "ROM", "GARAK")
GOOD_SCENE = "KIRA: Where is he?\nODO: In a holding cell.\n(Kira leaves)\n"
PROMPTS = [ScenePrompt("[Ops]\n(Kira enters)\n", "KIRA"), ScenePrompt("[Quark's]\n(Odo enters)\n", "ODO")]
SCENES = [GOOD_SCENE, "ODO: She is late.\nQUARK: As usual.\n"]
TOKENIZER = CharTokenizer.from_text("".join(p.text for p in PROMPTS) + "".join(SCENES) + "abcdefghijklmnopqrstuvwxyz")


def _tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()


def implicit_rewards(policy, reference, idx, prompt_lengths, lengths, beta: float) -> torch.Tensor:
    # DPO's policy scores a scene by how much more likely it makes it than the reference: beta [log π - log π_ref].
    with torch.no_grad():
        return beta * (
            sequence_log_probs(policy, idx, prompt_lengths, lengths)
            - sequence_log_probs(reference, idx, prompt_lengths, lengths)
        )


def _check_implicit_rewards(answer) -> list[str]:
    policy, reference = _tiny_gpt(1), _tiny_gpt(2)
    idx, prompt_lengths, lengths = encode_scenes(TOKENIZER, PROMPTS, SCENES)
    for beta in (0.1, 1.0):
        expected = implicit_rewards(policy, reference, idx, prompt_lengths, lengths, beta)
        got = answer(policy, reference, idx, prompt_lengths, lengths, beta)
        problem = close_problem(f"the implicit rewards of two scenes with beta={beta}", got, expected, atol=1e-4)
        if problem:
            return [problem + " (sum each scene's log-probabilities after its prompt: sequence_log_probs)"]
    same = answer(policy, policy, idx, prompt_lengths, lengths, 0.1)
    problem = close_problem(
        "the implicit rewards when the policy is the reference (should be 0)", same, torch.zeros(2), atol=1e-5
    )
    return [problem] if problem else []


register(
    Exercise(
        id="14.1",
        title="DPO's policy is a reward model",
        check=_check_implicit_rewards,
        solution=implicit_rewards,
        verified="beta times the policy's log-probability of each scene minus the reference's",
    )
)


def one_rule_variants() -> dict[str, str]:
    # Each variant of the good scene changes one thing, chosen to break one rule and leave the others alone.
    return {
        "well_formed": GOOD_SCENE.replace("ODO: In a holding cell.", "odo in a holding cell"),
        "known_speakers": GOOD_SCENE.replace("ODO:", "ZORBLAX:"),
        "says_something": GOOD_SCENE.replace("ODO: In a holding cell.", "ODO: Cells."),
        "requested_speaks": GOOD_SCENE.replace("KIRA: Where is he?", "QUARK: Where is he?"),
        "no_repetition": GOOD_SCENE + "KIRA: Where is he?\nODO: In a holding cell.\n",
    }


def _check_one_rule_variants(answer) -> list[str]:
    if not isinstance(answer, dict):
        return [f"the answer should be a dict from rule name to scene, got {type(answer).__name__}"]
    rater = SceneRater(MAIN_CHARACTERS)
    good = rater.rate(GOOD_SCENE, "KIRA").rules
    missing = [rule for rule in good if rule not in answer]
    if missing:
        return [f"no variant for the rule(s) {missing}: make one scene per rule, {list(good)}"]
    for rule, scene in answer.items():
        if rule not in good:
            return [f"{rule!r} is not one of the rater's rules {list(good)}"]
        if not isinstance(scene, str):
            return [f"the {rule!r} variant should be a scene (a string), got {scene!r}"]
        if not scene.endswith("\n"):
            return [
                f"the {rule!r} variant should end with a line break, as the good scene does: the rater leaves "
                "an unfinished last line out, so whatever is written there changes nothing"
            ]
        rules = rater.rate(scene, "KIRA").rules
        if rules[rule] >= good[rule]:
            return [f"the {rule!r} variant does not break its rule: {rule} is {rules[rule]:.2f}, as for the good scene"]
        others = [
            f"{other} ({good[other]:.2f} -> {rules[other]:.2f})"
            for other in good
            if other != rule and number_problem(other, rules[other], good[other])
        ]
        if others:
            return [f"the {rule!r} variant also changes other rules: {', '.join(others)}; change one thing only"]
    return []


register(
    Exercise(
        id="14.2",
        title="What did the reward model learn?",
        check=_check_one_rule_variants,
        solution=one_rule_variants,
        expects="value",
        verified="five variants of the good scene, each breaking its own rule and no other",
    )
)


def make_rater_reward(rater: SceneRater):
    # train_reinforce calls reward_fn(prompts, scenes) and wants one reward per scene.
    def rater_reward(prompts, scenes):
        return [rater.score(prompt, scene) for prompt, scene in zip(prompts, scenes)]

    return rater_reward


def _check_make_rater_reward(answer) -> list[str]:
    rater = SceneRater(MAIN_CHARACTERS)
    reward_fn = answer(rater)
    if not callable(reward_fn):
        return [f"make_rater_reward(rater) should return a function reward_fn(prompts, scenes), got {reward_fn!r}"]
    got = reward_fn(PROMPTS, SCENES)
    rewards = torch.as_tensor(got, dtype=torch.float32) if got is not None else None
    problem = close_problem(
        "reward_fn(prompts, scenes) for two scenes",
        rewards,
        torch.tensor([rater.score(p, s) for p, s in zip(PROMPTS, SCENES)]),
    )
    if problem:
        return [problem]
    policy, reference = _tiny_gpt(1), _tiny_gpt(1)
    config = RLConfig(steps=1, prompts_per_step=1, samples_per_prompt=2, max_new_tokens=8)
    train_reinforce(policy, reference, TOKENIZER, PROMPTS, reward_fn, config, progress=False)
    return []


register(
    Exercise(
        id="14.3",
        title="Cut out the middleman",
        check=_check_make_rater_reward,
        solution=make_rater_reward,
        verified="the rater's score of every scene, in the form train_reinforce takes as its reward",
    )
)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float) -> torch.Tensor:
    # How much more likely the policy made each scene than the reference did, chosen minus rejected.
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -torch.nn.functional.logsigmoid(beta * margin).mean()  # logsigmoid: no overflow for large margins


def _dpo_swapped(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    """A typical mistake: the margin the wrong way round (rejected minus chosen)."""
    return dpo_loss(policy_rejected, policy_chosen, reference_rejected, reference_chosen, beta)


def _dpo_without_beta(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    """A typical mistake: forgetting beta, the strength of the pull back to the reference."""
    return dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, 1.0)


def _check_dpo_loss(answer) -> list[str]:
    from ds9_utils.feedback import dpo_loss as library_dpo_loss

    generator = torch.Generator().manual_seed(14)
    for n, beta, scale in ((8, 0.1, 20.0), (1, 0.5, 5.0), (16, 0.1, 3000.0)):
        logps = [-(torch.rand(n, generator=generator) * scale + 10) for _ in range(4)]  # log-probabilities, < 0
        what = f"dpo_loss over {n} pair(s), beta={beta:g}" + (" (huge margins)" if scale > 100 else "")
        expected = library_dpo_loss(*logps, beta=beta)
        got = answer(*(t.clone() for t in logps), beta)
        problem = close_problem(what, got, expected)
        if problem is None:
            continue
        hint = typical_mistake(
            got.reshape(()) if isinstance(got, torch.Tensor) and got.numel() == 1 else got,  # a loss of shape (1,) too
            (
                (_dpo_swapped, "your margin is the wrong way round: chosen log-ratio minus rejected log-ratio"),
                (_dpo_without_beta, "you left out beta: the loss is -log sigmoid(beta * margin)"),
            ),
            (*logps, beta),
        )
        if hint:
            return [f"{hint} ({problem})"]
        if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            return [f"{problem}: with large margins, use F.logsigmoid rather than log(sigmoid(...))"]
        return [problem]
    return []


register(
    Exercise(
        id="14.4",
        title="The DPO loss",
        builds="the DPO loss",
        check=_check_dpo_loss,
        solution=dpo_loss,
        verified="the same loss as ds9_utils.feedback.dpo_loss, for one pair, a batch and margins in the thousands",
    )
)
