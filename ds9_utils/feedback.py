"""Learning what "good output" means from preferences: a rater, a reward model, REINFORCE and DPO.

Notebook 14 follows the recipe that turned GPT-3 into ChatGPT (RLHF), at the scale of the course model:

1. Ask for preferences. The policy (the language model being tuned) writes two scenes for the same prompt and
   a judge says which is better: a person (``collect_preferences`` takes any judge) or, when nobody is at the
   keyboard, ``SceneRater``, a programmatic rater whose rules are written down below.
2. Learn a reward model. ``RewardModel`` is the GPT body with a scalar head: it reads a whole scene (the
   mean of its hidden states) and returns one number. It is trained with the Bradley-Terry loss
   ``-log sigmoid(r_chosen - r_rejected)`` (``bradley_terry_loss``), so that the preferred scene of every pair
   scores higher.
3. Optimise the policy against it. ``train_reinforce`` samples scenes, scores them with the reward model and
   pushes up the log-probability of the better-than-average ones (REINFORCE with a leave-one-out baseline),
   while a KL penalty ``beta * [log p_policy(scene) - log p_reference(scene)]`` keeps it near the starting
   model, which stops it from drifting to text the reward model scores wrongly (reward hacking).
4. Or skip the reward model: DPO (``dpo_loss``, ``train_dpo``) trains the policy on the pairs directly.

Log-probabilities (``completion_log_probs``, ``sequence_log_probs``) are those ``generate`` sampled from:
when a scene is longer than the model's context, each token is scored from exactly the window it was
generated with.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

from .evaluate import SPEAKER_LINE, scene_format_report, speaker_counts
from .generate import generate
from .model import GPT
from .progress import progress_bar
from .tokenizers import Tokenizer

# ---------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class ScenePrompt:
    """The start of a scene to continue, and the character (in capitals, as in the script) who should speak."""

    text: str
    requested: str | None = None

    def __post_init__(self) -> None:
        if not self.text:
            raise ValueError("A ScenePrompt needs some text to continue, e.g. '[Ops]\\n(Kira enters)\\n'.")


def scene_prompts(places: Iterable[str], characters: Iterable[str]) -> list[ScenePrompt]:
    """One prompt per place and character: a scene heading and the character entering.

    ``scene_prompts(["Ops"], ["Kira"])`` gives ``[Ops]\\n(Kira enters)\\n`` with KIRA requested to speak.
    """
    prompts = [ScenePrompt(f"[{place}]\n({name} enters)\n", name.upper()) for place in places for name in characters]
    if not prompts:
        raise ValueError("scene_prompts needs at least one place and one character.")
    return prompts


def known_speakers(text: str, min_lines: int = 20) -> set[str]:
    """The names that speak at least ``min_lines`` lines in ``text`` (e.g. the training split)."""
    if min_lines < 1:
        raise ValueError(f"min_lines must be at least 1, got {min_lines}")
    return {name for name, count in speaker_counts(text).items() if count >= min_lines}


# ---------------------------------------------------------------------------------------------- the rater

#: The fewest words a speaker line must say to count for the rater's ``says_something`` rule.
MIN_WORDS = 2


@dataclass(frozen=True)
class Rating:
    """The rater's verdict on one scene: each rule between 0 (bad) and 1 (good), and their mean."""

    well_formed: float
    known_speakers: float
    says_something: float
    no_repetition: float
    requested_speaks: float | None = None  # None when no character was requested

    @property
    def rules(self) -> dict[str, float]:
        values = {
            "well_formed": self.well_formed,
            "known_speakers": self.known_speakers,
            "says_something": self.says_something,
            "no_repetition": self.no_repetition,
            "requested_speaks": self.requested_speaks,
        }
        return {name: value for name, value in values.items() if value is not None}

    @property
    def score(self) -> float:
        rules = self.rules
        return sum(rules.values()) / len(rules)


def repeated_fraction(text: str, n: int = 3) -> float:
    """The share of the word n-grams of ``text`` that already occurred earlier in it (0: no repetition).

    A loop such as ``KIRA: No. KIRA: No. KIRA: No.`` repeats most of its trigrams; natural dialogue of a few
    lines repeats almost none. Texts with fewer than ``n`` words have no n-grams and count as 0.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def spoken_texts(scene: str) -> list[str]:
    """What each complete speaker line of ``scene`` says (the text after ``NAME:``); an unfinished last line is
    left out, as the rater leaves it out."""
    lines = scene.split("\n")[:-1]  # the part after the last newline is unfinished (or empty)
    return [match.group("text") for line in lines if (match := SPEAKER_LINE.match(line.strip()))]


class SceneRater:
    """A programmatic judge of generated scenes, for when nobody is at the keyboard to rate them.

    Its rules, each scored from 0 to 1 on the generated text (not the prompt); the score is their mean:

    - ``well_formed``: the share of complete lines that are speaker lines, stage directions or scene headings
      (``ds9_utils.evaluate.classify_line``; an unfinished last line is left out). No complete line: 0.
    - ``known_speakers``: the share of speaker lines spoken by a known DS9 character. Nobody speaks: 0.
    - ``says_something``: the share of speaker lines that say at least ``MIN_WORDS`` words. A real scene has
      some one-word lines ("Yes.", "Nerys?"), a scene of nothing else says nothing. Nobody speaks: 0.
    - ``requested_speaks``: 1 if the requested character has a line, else 0 (only when one was requested).
    - ``no_repetition``: 1 minus the share of repeated word trigrams (``repeated_fraction``).

    ``judge`` compares two scenes: the one whose score is higher by at least ``margin`` wins; closer than that
    is a tie (no preference), as a person would shrug at two equally good scenes.
    """

    def __init__(self, known: Iterable[str], *, margin: float = 0.05):
        self.known = frozenset(known)
        if not self.known:
            raise ValueError("SceneRater needs the names of the known speakers, e.g. known_speakers(train_text).")
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        self.margin = margin

    def rate(self, scene: str, requested: str | None = None) -> Rating:
        """Rate one generated scene (the text after the prompt)."""
        report = scene_format_report(scene, self.known)
        has_lines = report["lines"] > 0
        said = spoken_texts(scene)
        return Rating(
            well_formed=report["well_formed_fraction"] if has_lines else 0.0,
            known_speakers=report["known_speaker_fraction"] if said else 0.0,
            says_something=sum(len(text.split()) >= MIN_WORDS for text in said) / len(said) if said else 0.0,
            no_repetition=1.0 - repeated_fraction(scene),
            requested_speaks=None if requested is None else float(requested in report["speakers"]),
        )

    def score(self, prompt: ScenePrompt, scene: str) -> float:
        return self.rate(scene, prompt.requested).score

    def judge(self, prompt: ScenePrompt, scene_a: str, scene_b: str) -> int | None:
        """0 if scene A is better, 1 if scene B is, None for a tie."""
        difference = self.score(prompt, scene_a) - self.score(prompt, scene_b)
        if abs(difference) < self.margin:
            return None
        return 0 if difference > 0 else 1


# ---------------------------------------------------------------------------------------------- preferences

Judge = Callable[[ScenePrompt, str, str], "int | None"]


@dataclass(frozen=True)
class PreferencePair:
    """Two continuations of one prompt, the preferred one first."""

    prompt: ScenePrompt
    chosen: str
    rejected: str


def sample_completions(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    n: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[str]:
    """``n`` continuations of ``prompt`` (the new text only), sampled in one batch."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    device = next(model.parameters()).device
    prompt_ids = _encode_prompt(tokenizer, prompt)
    idx = torch.tensor([prompt_ids] * n, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    finally:
        model.train(was_training)
    return [tokenizer.decode(row) for row in out[:, len(prompt_ids) :].tolist()]


def collect_preferences(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[ScenePrompt],
    judge: Judge,
    *,
    pairs_per_prompt: int = 1,
    max_new_tokens: int = 96,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[PreferencePair]:
    """Ask ``judge`` to compare two fresh scenes per prompt, ``pairs_per_prompt`` times; ties are dropped.

    ``judge(prompt, scene_a, scene_b)`` returns 0 (A is better), 1 (B is better) or None (no preference):
    ``SceneRater.judge``, or a function that asks a person.
    """
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be at least 1, got {pairs_per_prompt}")
    pairs = []
    for prompt in progress_bar(prompts, desc="comparing scenes", unit="prompt", disable=not progress):
        scenes = sample_completions(
            model,
            tokenizer,
            prompt.text,
            2 * pairs_per_prompt,
            max_new_tokens,
            temperature=temperature,
            generator=generator,
        )
        for a, b in zip(scenes[0::2], scenes[1::2]):
            verdict = judge(prompt, a, b)
            if verdict not in (0, 1, None):
                raise ValueError(f"A judge must return 0 (first is better), 1 (second) or None (tie), got {verdict!r}")
            if verdict is not None:
                pairs.append(PreferencePair(prompt, *((a, b) if verdict == 0 else (b, a))))
    return pairs


def preference_rate(
    judge: Judge, prompts: Sequence[ScenePrompt], tuned: Sequence[str], baseline: Sequence[str]
) -> float:
    """How often the judge prefers the tuned model's scene to the baseline's for the same prompt (ties: half).

    0.5 means no better, 1.0 always better. ``prompts``, ``tuned`` and ``baseline`` are aligned lists.
    """
    if not (len(prompts) == len(tuned) == len(baseline)) or not prompts:
        raise ValueError(
            f"preference_rate needs equally long, non-empty lists; got {len(prompts)} prompts, "
            f"{len(tuned)} tuned and {len(baseline)} baseline scenes"
        )
    wins = {0: 1.0, 1: 0.0, None: 0.5}
    return sum(wins[judge(p, a, b)] for p, a, b in zip(prompts, tuned, baseline)) / len(prompts)


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for the default ``z``) around a rate measured on ``n`` comparisons.

    A preference rate from a few dozen comparisons moves a lot by chance; the interval says how much. If it
    contains 0.5, the comparisons cannot tell the model from a coin toss. Wilson's interval, unlike the
    textbook ``rate +- z * standard error``, stays inside [0, 1] and behaves at rates near 0 or 1. A rate that
    counts ties as half (``preference_rate``) is treated like any other fraction of ``n``.
    """
    if n < 1:
        raise ValueError(f"wilson_interval needs at least one comparison, got n={n}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"wilson_interval needs a rate between 0 and 1, got {rate}")
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half_width = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


# ---------------------------------------------------------------------------------------------- batches


def _encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    if not prompt:
        raise ValueError("The prompt is empty: give at least one character to continue from.")
    return tokenizer.encode(prompt)


def pad_sequences(sequences: Sequence[Sequence[int]], device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Token lists of different lengths as one (B, T) tensor, padded on the right with 0, and their lengths.

    Right padding is harmless for a causal model: a position never looks at the ones after it.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pad_sequences needs at least one sequence, and no empty ones.")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    idx = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        idx[row, : len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
    return idx.to(device), lengths.to(device)


def encode_scenes(
    tokenizer: Tokenizer, prompts: Sequence[ScenePrompt], scenes: Sequence[str], device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor, Tensor]:
    """Prompt + scene as padded token ids (B, T), with each row's prompt length and total length."""
    if len(prompts) != len(scenes):
        raise ValueError(f"got {len(prompts)} prompts for {len(scenes)} scenes; they must pair up")
    prompt_ids = [_encode_prompt(tokenizer, p.text) for p in prompts]
    idx, lengths = pad_sequences([p + tokenizer.encode(s) for p, s in zip(prompt_ids, scenes)], device)
    return idx, torch.tensor([len(p) for p in prompt_ids], device=idx.device), lengths


# ---------------------------------------------------------------------------------------------- log-probs


def completion_log_probs(
    model: nn.Module, idx: Tensor, prompt_length: int, *, context_slide: int | None = None
) -> Tensor:
    """Log-probability of each token after the prompt, (B, T - prompt_length), as ``generate`` sampled it.

    While prompt and text fit in the model's context this is one forward pass. Past that, ``generate`` slides
    its window by ``context_slide`` tokens (default a quarter of the block) at a time; the same windows are
    used here, one forward pass each, so every token is scored from the context it was sampled from.
    """
    if idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError("idx must be a (batch, time) LongTensor of token ids.")
    T = idx.size(1)
    if not 1 <= prompt_length < T:
        raise ValueError(f"prompt_length must be between 1 and the sequence length - 1 ({T - 1}), got {prompt_length}")
    block_size = model.block_size
    slide = context_slide or max(1, block_size // 4)
    windows: dict[int, list[int]] = {}  # window start -> the positions predicted from that window
    window_start = max(0, prompt_length - block_size)
    for position in range(prompt_length, T):  # generate's rule, replayed
        if position - window_start > block_size:
            window_start += slide
        windows.setdefault(window_start, []).append(position)
    pieces = []
    for start, positions in windows.items():
        logits, _ = model(idx[:, start : positions[-1]])
        rows = logits[:, [p - 1 - start for p in positions]].float().log_softmax(-1)
        pieces.append(rows.gather(-1, idx[:, positions].unsqueeze(-1)).squeeze(-1))
    return torch.cat(pieces, dim=1)


def sequence_log_probs(model: nn.Module, idx: Tensor, prompt_lengths: Tensor, lengths: Tensor) -> Tensor:
    """Log-probability of each row's text after its prompt, summed: (B,). Rows are right-padded (see
    ``encode_scenes``); positions before ``prompt_lengths`` or from ``lengths`` on do not count.

    When every row fits in the context, one padded forward pass scores them all; otherwise rows that share a
    prompt length and a length are scored together with ``completion_log_probs``.
    """
    B, T = idx.shape
    if prompt_lengths.shape != (B,) or lengths.shape != (B,):
        raise ValueError(
            f"prompt_lengths and lengths must hold one number per row ({B}), "
            f"got shapes {tuple(prompt_lengths.shape)} and {tuple(lengths.shape)}"
        )
    if bool((prompt_lengths < 1).any()) or bool((lengths <= prompt_lengths).any()) or bool((lengths > T).any()):
        raise ValueError(
            "every row needs a prompt (prompt length >= 1) and at least one token after it, within the padded width"
        )
    if T <= model.block_size:
        logits, _ = model(idx[:, :-1])
        token_logps = logits.float().log_softmax(-1).gather(-1, idx[:, 1:].unsqueeze(-1)).squeeze(-1)
        positions = torch.arange(1, T, device=idx.device)
        counted = (positions >= prompt_lengths[:, None]) & (positions < lengths[:, None])
        return (token_logps * counted).sum(dim=1)
    result = torch.zeros(B, device=idx.device)
    for prompt_length, length in torch.stack([prompt_lengths, lengths], dim=1).unique(dim=0).tolist():
        rows = ((prompt_lengths == prompt_length) & (lengths == length)).nonzero().squeeze(1)
        result = result.index_put((rows,), completion_log_probs(model, idx[rows, :length], prompt_length).sum(dim=1))
    return result


def kl_estimate(policy_log_probs: Tensor, reference_log_probs: Tensor) -> Tensor:
    """The KL divergence of the policy from the reference, estimated from sequences the policy sampled.

    KL(policy || reference) is the average over the policy's own samples of log p_policy - log p_reference,
    so each sample's difference is an unbiased estimate (it can be negative; its mean cannot, in the limit).
    Returns the per-sample differences; average them for the estimate.
    """
    if policy_log_probs.shape != reference_log_probs.shape:
        raise ValueError(
            f"policy and reference log-probs must have the same shape, got "
            f"{tuple(policy_log_probs.shape)} and {tuple(reference_log_probs.shape)}"
        )
    return policy_log_probs - reference_log_probs


# ---------------------------------------------------------------------------------------------- reward model


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """The reward model's pairwise loss: -log sigmoid(r_chosen - r_rejected), averaged over the pairs.

    Under the Bradley-Terry model a person prefers A to B with probability sigmoid(r_A - r_B); this is the
    negative log-likelihood of the preferences we saw. Equal rewards cost log 2 per pair.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.numel() == 0:
        raise ValueError(
            f"chosen and rejected rewards must be non-empty and of the same shape, got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


class RewardModel(nn.Module):
    """The GPT body (a copy of the language model's weights) with a scalar head instead of the next-token one.

    The head reads the mean of the final hidden states of every token of the text and returns one number: how
    good the text is. Why the mean and not the last token's state alone (as large reward models do): the
    rater's rules are shares over a scene's lines (how many are well formed, how many speakers are known), and
    a 4-layer, 128-wide model cannot pack a whole scene into one position's state; averaging over positions
    lets the head add up what each position sees. Padding is left out of the mean. Texts longer than the
    model's context are scored on their last ``block_size`` tokens.
    """

    def __init__(self, language_model: GPT):
        super().__init__()
        if not isinstance(language_model, GPT):
            raise TypeError(f"RewardModel starts from a ds9_utils GPT, got {type(language_model).__name__}")
        self.body = copy.deepcopy(language_model)
        self.head = nn.Linear(language_model.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)  # every text starts at reward 0: no opinion yet
        nn.init.zeros_(self.head.bias)

    @property
    def block_size(self) -> int:
        return self.body.block_size

    def forward(self, idx: Tensor, lengths: Tensor) -> Tensor:
        """The reward (B,) of each right-padded row of ``idx`` (B, T), whose real lengths are ``lengths``."""
        if idx.dim() != 2 or lengths.shape != (idx.size(0),):
            raise ValueError("RewardModel needs idx (batch, time) and one length per row; use encode_scenes.")
        if bool((lengths < 1).any()) or bool((lengths > idx.size(1)).any()):
            raise ValueError(f"lengths must be between 1 and the padded width {idx.size(1)}")
        width = min(idx.size(1), self.block_size)
        starts = (lengths - width).clamp(min=0)  # crop long texts to their last block_size tokens
        idx = idx.gather(1, starts[:, None] + torch.arange(width, device=idx.device))
        real = (torch.arange(width, device=idx.device)[None, :] < (lengths - starts)[:, None]).unsqueeze(-1)
        states = self.body.hidden_states(idx) * real  # (B, T, C), zero where a row is padding
        return self.head(states.sum(1) / real.sum(1)).squeeze(-1)

    @torch.no_grad()
    def score(self, tokenizer: Tokenizer, prompts: Sequence[ScenePrompt], scenes: Sequence[str]) -> Tensor:
        """The reward of each prompt + scene, without gradients (on the model's device)."""
        idx, _, lengths = encode_scenes(tokenizer, prompts, scenes, next(self.parameters()).device)
        return self(idx, lengths)


@dataclass
class RewardConfig:
    """How to train the reward model on preference pairs."""

    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    seed: int = 1337

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("RewardConfig needs epochs >= 1, batch_size >= 1 and learning_rate > 0")


def _pair_batches(pairs: Sequence[PreferencePair], batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(len(pairs), generator=generator).tolist() if generator else range(len(pairs))
    order = list(order)
    for first in range(0, len(order), batch_size):
        yield [pairs[i] for i in order[first : first + batch_size]]


def _encode_pairs(tokenizer: Tokenizer, batch: Sequence[PreferencePair], device) -> tuple[Tensor, Tensor, Tensor]:
    """Chosen scenes then rejected ones, as one padded batch of 2 * len(batch) rows."""
    prompts = [pair.prompt for pair in batch] * 2
    scenes = [pair.chosen for pair in batch] + [pair.rejected for pair in batch]
    return encode_scenes(tokenizer, prompts, scenes, device)


def _check_pairs(pairs: Sequence[PreferencePair]) -> None:
    if not pairs:
        raise ValueError(
            "No preference pairs: collect some with collect_preferences (ties are dropped, so ask "
            "for more pairs or longer scenes if every comparison was a tie)."
        )


def train_reward_model(
    reward_model: RewardModel,
    tokenizer: Tokenizer,
    pairs: Sequence[PreferencePair],
    config: RewardConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Fit the reward model to the pairs with the Bradley-Terry loss; returns the loss and accuracy per step."""
    _check_pairs(pairs)
    config = config or RewardConfig()
    device = next(reward_model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(reward_model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    steps = config.epochs * math.ceil(len(pairs) / config.batch_size)
    reward_model.train()
    with progress_bar(total=steps, desc="reward model", unit="step", disable=not progress) as bar:
        for _ in range(config.epochs):
            for batch in _pair_batches(pairs, config.batch_size, generator):
                idx, _, lengths = _encode_pairs(tokenizer, batch, device)
                chosen, rejected = reward_model(idx, lengths).chunk(2)
                loss = bradley_terry_loss(chosen, rejected)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history["loss"].append(loss.item())
                history["accuracy"].append((chosen > rejected).float().mean().item())
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    reward_model.eval()
    return history


@torch.no_grad()
def pairwise_accuracy(
    reward_model: RewardModel, tokenizer: Tokenizer, pairs: Sequence[PreferencePair], *, batch_size: int = 64
) -> float:
    """The share of pairs whose chosen scene the reward model scores higher than the rejected one."""
    _check_pairs(pairs)
    was_training = reward_model.training
    reward_model.eval()
    device = next(reward_model.parameters()).device
    correct = 0
    for batch in _pair_batches(pairs, batch_size, None):
        idx, _, lengths = _encode_pairs(tokenizer, batch, device)
        chosen, rejected = reward_model(idx, lengths).chunk(2)
        correct += int((chosen > rejected).sum())
    reward_model.train(was_training)
    return correct / len(pairs)


# ---------------------------------------------------------------------------------------------- REINFORCE

RewardFunction = Callable[[Sequence[ScenePrompt], Sequence[str]], "Tensor | Sequence[float]"]


@dataclass
class RLConfig:
    """How to optimise the policy against a reward: REINFORCE with a leave-one-out baseline and a KL penalty.

    Each step samples ``samples_per_prompt`` scenes for each of ``prompts_per_step`` prompts. A scene's
    return is ``reward - kl_coef * (log p_policy - log p_reference)``; its advantage is its return minus the
    mean return of the other scenes of the same prompt (the baseline), which tells better-than-usual from
    worse-than-usual without changing what is optimised.
    """

    steps: int = 60
    prompts_per_step: int = 4
    samples_per_prompt: int = 8
    max_new_tokens: int = 96
    kl_coef: float = 0.1
    learning_rate: float = 3e-5
    temperature: float = 1.0
    grad_clip: float = 1.0
    seed: int = 1337

    def __post_init__(self) -> None:
        if self.steps < 0 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ValueError("RLConfig needs steps >= 0, prompts_per_step >= 1 and max_new_tokens >= 1")
        if self.samples_per_prompt < 2:
            raise ValueError(
                "samples_per_prompt must be at least 2: the baseline of a scene is the mean of the "
                "others for the same prompt"
            )
        if self.kl_coef < 0 or self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("RLConfig needs kl_coef >= 0, learning_rate > 0 and temperature > 0")


def leave_one_out_advantages(returns: Tensor) -> Tensor:
    """Each return minus the mean of the others in its row: (prompts, samples) -> same shape."""
    k = returns.size(-1)
    if k < 2:
        raise ValueError("leave-one-out needs at least two samples per prompt")
    return returns - (returns.sum(-1, keepdim=True) - returns) / (k - 1)


def train_reinforce(
    policy: GPT,
    reference: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[ScenePrompt],
    reward_fn: RewardFunction,
    config: RLConfig | None = None,
    *,
    monitor: Callable[[ScenePrompt, str], float] | None = None,
    progress: bool = True,
) -> dict[str, list]:
    """Tune ``policy`` in place to earn more of ``reward_fn`` while staying near ``reference`` (kept frozen).

    ``reward_fn(prompts, scenes)`` returns one reward per scene (e.g. ``RewardModel.score``). ``monitor``, if
    given, scores every sampled scene too (e.g. the rater), only to watch; it never affects training.
    Returns the history per step: ``reward`` and ``kl`` (means over the step's scenes, KL in nats per scene),
    ``objective`` (reward - kl_coef * kl), ``monitor`` (when given) and the last step's ``samples``.
    """
    if not prompts:
        raise ValueError("train_reinforce needs at least one prompt.")
    config = config or RLConfig()
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    choose = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    reference.eval()  # only read, under no_grad: its weights stay as they are
    policy.eval()  # no dropout: the log-probs must be those of the distribution we sample from
    history: dict[str, list] = {"reward": [], "kl": [], "objective": [], "samples": []}
    if monitor is not None:
        history["monitor"] = []
    k = config.samples_per_prompt
    bar = progress_bar(
        range(config.steps), desc=f"REINFORCE (KL coefficient {config.kl_coef:g})", unit="step", disable=not progress
    )
    for _ in bar:
        chosen = torch.randint(len(prompts), (config.prompts_per_step,), generator=choose).tolist()
        step_prompts = [prompts[i] for i in chosen for _ in range(k)]
        scenes = []
        for i in chosen:
            scenes += sample_completions(
                policy,
                tokenizer,
                prompts[i].text,
                k,
                config.max_new_tokens,
                temperature=config.temperature,
                generator=generator,
            )
        idx, prompt_lengths, lengths = encode_scenes(tokenizer, step_prompts, scenes, device)
        rewards = torch.as_tensor(reward_fn(step_prompts, scenes), dtype=torch.float32, device=device).reshape(-1)
        policy_logps = sequence_log_probs(policy, idx, prompt_lengths, lengths)
        with torch.no_grad():
            reference_logps = sequence_log_probs(reference, idx, prompt_lengths, lengths)
        kl = kl_estimate(policy_logps.detach(), reference_logps)
        returns = rewards - config.kl_coef * kl
        advantages = leave_one_out_advantages(returns.view(-1, k)).view(-1)
        loss = -(advantages * policy_logps).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
        optimizer.step()
        history["reward"].append(rewards.mean().item())
        history["kl"].append(kl.mean().item())
        history["objective"].append(returns.mean().item())
        if monitor is not None:
            history["monitor"].append(sum(monitor(p, s) for p, s in zip(step_prompts, scenes)) / len(scenes))
        bar.set_postfix(reward=f"{history['reward'][-1]:.2f}", kl=f"{history['kl'][-1]:.1f}")
    history["samples"] = list(zip(step_prompts, scenes)) if config.steps else []
    return history


# ---------------------------------------------------------------------------------------------- DPO


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """Direct Preference Optimisation: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), averaged.

    A log-ratio is log p_policy(scene) - log p_reference(scene): how much more likely the policy has made a
    scene than the starting model. ``beta * log-ratio`` plays the part of the reward (DPO's "implicit
    reward"), so this is the Bradley-Terry loss with the policy itself as the reward model, and ``beta`` is
    the strength of the pull back to the reference, as the KL coefficient is in REINFORCE.
    """
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)}
    if len(shapes) != 1 or policy_chosen.numel() == 0:
        raise ValueError(f"dpo_loss needs four non-empty log-prob tensors of one shape, got {sorted(shapes)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


@dataclass
class DPOConfig:
    """How to tune the policy with DPO on preference pairs."""

    epochs: int = 2
    batch_size: int = 16
    beta: float = 0.1
    learning_rate: float = 3e-5
    grad_clip: float = 1.0
    seed: int = 1337

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.beta <= 0 or self.learning_rate <= 0:
            raise ValueError("DPOConfig needs epochs >= 1, batch_size >= 1, beta > 0 and learning_rate > 0")


def train_dpo(
    policy: GPT,
    reference: GPT,
    tokenizer: Tokenizer,
    pairs: Sequence[PreferencePair],
    config: DPOConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Tune ``policy`` in place on the pairs with ``dpo_loss``, ``reference`` frozen.

    Returns per step the ``loss``, the ``accuracy`` (share of pairs whose implicit reward ranks the chosen
    scene first) and the mean implicit reward ``margin`` (beta times the difference of log-ratios).
    """
    _check_pairs(pairs)
    config = config or DPOConfig()
    device = next(policy.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    reference.eval()  # only read, under no_grad: its weights stay as they are
    policy.eval()
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "margin": []}
    steps = config.epochs * math.ceil(len(pairs) / config.batch_size)
    with progress_bar(total=steps, desc="DPO", unit="step", disable=not progress) as bar:
        for _ in range(config.epochs):
            for batch in _pair_batches(pairs, config.batch_size, generator):
                idx, prompt_lengths, lengths = _encode_pairs(tokenizer, batch, device)
                policy_chosen, policy_rejected = sequence_log_probs(policy, idx, prompt_lengths, lengths).chunk(2)
                with torch.no_grad():
                    reference_chosen, reference_rejected = sequence_log_probs(
                        reference, idx, prompt_lengths, lengths
                    ).chunk(2)
                loss = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, config.beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
                optimizer.step()
                margin = config.beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
                history["loss"].append(loss.item())
                history["accuracy"].append((margin > 0).float().mean().item())
                history["margin"].append(margin.mean().item())
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    return history
