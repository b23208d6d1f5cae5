"""Fine-tuning: teach a trained GPT one character's voice, with all its weights or with LoRA adapters.

Read it top to bottom:

1. ``character_text`` and ``character_split``: the fine-tuning data, every line one character speaks, in the
   corpus format (``QUARK: ...``), split by episode like the corpus, so validation lines come from episodes
   the model has never seen. ``mix_general_lines`` adds a share of everyone's scenes (``sample_scenes``)
   to it, against forgetting; ``spoken_mask`` picks out the words a line says, name tags left out, and
   ``characteristic_words`` the words the character says far more often than everyone else.
2. ``LoRAConfig``, ``LoRALinear`` and ``add_lora``: low-rank adaptation (Hu et al., 2021). A frozen weight
   matrix ``W`` (out x in) gets a trainable update ``(alpha / rank) * B @ A``, with ``A`` (rank x in) and
   ``B`` (out x rank). ``B`` starts at zero, so the adapted model starts as the base model exactly, and only
   ``rank * (in + out)`` numbers per matrix are trained instead of ``in * out``.
3. ``merge_lora``: fold the update into ``W`` for inference, giving a plain GPT that runs as fast as the base.
4. ``save_adapter`` and ``load_adapter``: an adapter file holds only ``A`` and ``B`` (and what they belong
   to), written atomically and read with ``torch.load(weights_only=True)``; loading it onto the same base
   model gives the fine-tuned model back exactly.
5. ``count_parameters`` and ``training_state_bytes``: what each way of fine-tuning trains and holds in memory.
6. ``train_seeds`` and ``mean_and_spread``: one fine-tuning recipe run with several seeds, so a difference
   between two recipes can be told from the run-to-run spread.

Training itself is ``ds9_utils.train.train``: its optimizer only takes parameters with ``requires_grad``,
and ``add_lora`` leaves exactly the adapters trainable.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from .corpus import SCENE_SEPARATOR, SPLIT_NAMES, load_episodes, normalise_characters, render_line
from .evaluate import SPEAKER_LINE
from .files import load_torch, save_torch
from .model import GPT
from .parse import Episode
from .settings import corpus_dir as default_corpus_dir
from .train import TrainResult, set_seed, train
from .train_config import TrainConfig

ADAPTER_FORMAT = "ds9_utils-lora-adapter"
ADAPTER_VERSION = 1
#: The linear layers of a GPT block that LoRA can adapt: the attention's query/key/value and output
#: projections, and the feed-forward network's two layers.
LORA_TARGETS = ("attn.qkv", "attn.proj", "ffwd.expand", "ffwd.proj")
WORD = re.compile(r"[a-z']+")  # a word of lower-cased spoken text, for characteristic_words


# ---------------------------------------------------------------------------------------------- the data


def character_text(episodes: Iterable[Episode], speaker: str) -> str:
    """Every line ``speaker`` says in ``episodes``, in the corpus format, one scene's lines a block.

    Lines are rendered as the corpus renders them (``QUARK [OC]: (to Rom) Brother...``), consecutive lines of
    one scene one after another, scenes one blank line apart, with the corpus's character normalisation.
    """
    speaker = speaker.strip().upper()
    blocks = []
    for episode in episodes:
        for scene in episode.scenes:
            lines = [render_line(line) for line in scene.lines if line.kind == "dialogue" and line.speaker == speaker]
            if lines:
                blocks.append("\n".join(lines))
    return normalise_characters(SCENE_SEPARATOR.join(blocks)) + "\n" if blocks else ""


def character_split(speaker: str, corpus_dir: Path | None = None) -> dict[str, str]:
    """``character_text`` of each split ("train", "val", "test"), using the corpus's own episode split.

    Raises a clear error when the character has no lines in the training or the validation episodes.
    """
    corpus_dir = Path(corpus_dir) if corpus_dir is not None else default_corpus_dir()
    episodes = load_episodes(corpus_dir)
    split = json.loads((corpus_dir / "split.json").read_text(encoding="utf-8"))
    by_number = {episode.number: episode for episode in episodes}
    texts = {
        name: character_text((by_number[n] for n in split[name] if n in by_number), speaker) for name in SPLIT_NAMES
    }
    for name in ("train", "val"):
        if not texts[name]:
            raise ValueError(
                f"{speaker.upper()!r} speaks no line in the {name} episodes; pick a character who "
                "speaks in both (see CorpusSummary.top_speakers, e.g. 'QUARK', 'ODO' or 'KIRA')"
            )
    return texts


def sample_scenes(text: str, n_chars: int, seed: int = 0) -> str:
    """Whole scenes of ``text`` (blocks one blank line apart) drawn at random until they hold ``n_chars``.

    Drawn from the whole text, not its first pages (one episode's opening is not everyone's lines), and kept
    whole, so each keeps its speakers in order. The same ``seed`` draws the same scenes.
    """
    scenes = [scene for scene in text.split(SCENE_SEPARATOR) if scene.strip()]
    random.Random(seed).shuffle(scenes)
    chosen, size = [], 0
    for scene in scenes:
        if size >= n_chars:
            break
        chosen.append(scene)
        size += len(scene) + len(SCENE_SEPARATOR)
    if size < n_chars:
        raise ValueError(f"the text has {size:,} characters in scenes, fewer than the {n_chars:,} asked for")
    return SCENE_SEPARATOR.join(chosen) + "\n" if chosen else ""


def mix_general_lines(character_text: str, general_text: str, general_share: float, seed: int = 0) -> str:
    """``character_text`` followed by scenes of ``general_text`` (``sample_scenes``), ``general_share`` of it all.

    Fine-tuning on one character alone pulls the model away from everyone else: its loss on their lines
    rises. Keeping a share of everyone's lines in the fine-tuning data (rehearsal) keeps it practising them.
    Where the scenes go does not matter: ``train`` draws its windows uniformly from the whole text.
    """
    if isinstance(general_share, bool) or not (isinstance(general_share, (int, float)) and 0 <= general_share < 1):
        raise ValueError(f"general_share must be a fraction from 0 up to (not including) 1, got {general_share!r}")
    wanted = round(len(character_text) * general_share / (1 - general_share))
    if not wanted:
        return character_text
    return character_text.rstrip("\n") + SCENE_SEPARATOR + sample_scenes(general_text, wanted, seed)


def spoken_mask(text: str, *, exclude: str | None = None) -> torch.Tensor:
    """Which of ``token_losses(text)`` score spoken words: a boolean tensor of ``len(text) - 1`` entries.

    Entry ``j`` belongs to character ``j + 1``, as in ``token_losses`` (nothing predicts the first one). A
    character counts as spoken when it is in what a speaker line says (after ``NAME [note]: ``) or is the
    newline that ends that line; name tags, headings, directions and blank lines do not. The name tag is left
    out because it is the easy part of one character's text (every line starts with ``QUARK: ``): a model
    learns it in a few steps, and it says nothing about how he speaks. ``exclude`` leaves out every line of
    one speaker, to score everyone else.
    """
    excluded = exclude.strip().upper() if exclude else None
    mask = torch.zeros(len(text), dtype=torch.bool)
    start = 0
    for line in text.split("\n"):
        match = SPEAKER_LINE.match(line)
        if match and match.group("name").strip() != excluded:
            mask[start + match.start("text") : start + len(line) + 1] = True
        start += len(line) + 1
    return mask[1:]


def spoken_words(text: str) -> list[str]:
    """The words the speaker lines of ``text`` say, lower-cased (``"QUARK: Rom's bar!"`` -> ``["rom's", "bar"]``)."""
    said = (match.group("text") for match in map(SPEAKER_LINE.match, text.split("\n")) if match)
    return WORD.findall(" ".join(said).lower())


def characteristic_words(character_text: str, general_text: str, n: int = 12, min_count: int = 30) -> list[str]:
    """The ``n`` words the character says most often compared with everyone: a readable trace of a voice.

    Words are ranked by how many times more often they come in ``character_text``'s spoken words than in
    ``general_text``'s (per word said). ``min_count`` keeps out words the character says too rarely for the
    ratio to mean anything (a name said twice). Counting them in generated lines shows a voice that a loss
    of a few hundredths of a nat hides.
    """
    character, general = Counter(spoken_words(character_text)), Counter(spoken_words(general_text))
    character_total, general_total = sum(character.values()), sum(general.values())
    if not character_total or not general_total:
        raise ValueError("characteristic_words needs speaker lines (NAME: ...) in both texts")

    def ratio(word: str) -> float:
        return (character[word] / character_total) / ((general[word] + 1) / general_total)

    frequent = [word for word, count in character.items() if count >= min_count]
    return sorted(frequent, key=ratio, reverse=True)[:n]


# ---------------------------------------------------------------------------------------------- LoRA


@dataclass(frozen=True)
class LoRAConfig:
    """Where the adapters go and how big they are.

    rank: the inner dimension r of ``B @ A``: each adapted matrix learns an update of rank at most r.
    alpha: the update is scaled by ``alpha / rank``, so changing the rank does not change how big the
        update starts out for the same learning rate.
    targets: which linear layers of every block get an adapter, from ``LORA_TARGETS``.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRAConfig.rank must be a whole number >= 1, got {self.rank!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not (math.isfinite(self.alpha) and self.alpha > 0)
        ):
            raise ValueError(f"LoRAConfig.alpha must be a positive number (often 2 * rank), got {self.alpha!r}")
        if isinstance(self.targets, str) or not self.targets:
            raise ValueError(
                f"LoRAConfig.targets must be a non-empty tuple of layer names from {LORA_TARGETS}, got {self.targets!r}"
            )
        unknown = [target for target in self.targets if target not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"LoRAConfig.targets {unknown} are not layers LoRA can adapt; choose from {LORA_TARGETS}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``y = base(x) + (alpha / r) * x A^T B^T``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank > min(base.in_features, base.out_features):
            raise ValueError(
                f"LoRA rank {rank} is larger than the layer it adapts ({base.out_features} x "
                f"{base.in_features}): a low-rank update needs rank <= {min(base.in_features, base.out_features)}"
            )
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.scaling = alpha / rank
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def delta_weight(self) -> torch.Tensor:
        """The update LoRA adds to the base weight: ``(alpha / r) * B @ A``, shaped like the weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matrix products (x A^T, then B^T) instead of building the full update matrix.
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}"


def _lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, module)


def add_lora(model: GPT, config: LoRAConfig) -> GPT:
    """Freeze every weight of ``model`` and wrap its target layers in ``LoRALinear``; returns ``model``.

    The model is changed in place (copy it first with ``copy.deepcopy`` to keep the base). Afterwards only
    the adapters' ``lora_A`` and ``lora_B`` have ``requires_grad``, so ``train`` trains only them.
    """
    if _lora_modules(model):
        raise ValueError("this model already has LoRA adapters; merge_lora() it or start from the base model")
    suffixes = tuple("." + target for target in config.targets)
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("blocks.") and name.endswith(suffixes)
    ]
    if not targets:
        raise ValueError(
            f"the model has no linear layers named like {config.targets}; LoRA here needs the "
            "course's GPT (ds9_utils.model.GPT)"
        )
    model.requires_grad_(False)
    for name in targets:
        _set_submodule(model, name, LoRALinear(model.get_submodule(name), config.rank, config.alpha))
    model.lora_config = config
    return model


def merge_lora(model: GPT) -> GPT:
    """A plain GPT whose weights are ``W + (alpha / r) * B @ A``: the adapted model's function, no adapters.

    ``model`` is left as it was. The merged model trains like any GPT (every parameter ``requires_grad``).
    """
    modules = _lora_modules(model)
    if not modules:
        raise ValueError("this model has no LoRA adapters to merge; add them with add_lora() or load_adapter()")
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in _lora_modules(merged).items():
            linear = module.base
            linear.weight += module.delta_weight()
            _set_submodule(merged, name, linear)
    del merged.lora_config
    return merged.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only (``...lora_A`` and ``...lora_B``), detached copies on the CPU."""
    state = {
        name: tensor.detach().cpu().clone()
        for name, tensor in model.state_dict().items()
        if name.endswith((".lora_A", ".lora_B"))
    }
    if not state:
        raise ValueError("this model has no LoRA adapters; add them with add_lora() first")
    return state


def base_fingerprint(model: nn.Module) -> str:
    """A SHA-256 of the base weights (the adapters left out), to check an adapter meets its own base model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith((".lora_A", ".lora_B")):
            continue
        digest.update(name.replace(".base.", ".").encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- adapter files


def save_adapter(path: str | Path, model: GPT) -> Path:
    """Write only the adapters (and the config and base fingerprint they need), atomically.

    A few tens of kilobytes instead of the whole model: many adapters can share one base model on disk.
    """
    if not _lora_modules(model):
        raise ValueError("this model has no LoRA adapters to save; add them with add_lora() first")
    state = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "lora_config": {**asdict(model.lora_config), "targets": list(model.lora_config.targets)},
        "model_config": asdict(model.config),
        "base_fingerprint": base_fingerprint(model),
        "weights": lora_state_dict(model),
    }
    return save_torch(path, state)


def load_adapter(path: str | Path, model: GPT, *, check_base: bool = True) -> GPT:
    """Add the adapters saved at ``path`` to ``model`` (in place, like ``add_lora``) and return it.

    ``model`` must be the base model the adapters were trained on: same shape, and (with ``check_base``)
    the same weights, checked by fingerprint, because adapters on another base give other outputs.
    """
    path = Path(path)
    saved = load_torch(path, "cpu", what="adapter", remedy="save one with save_adapter(path, model)")
    if not isinstance(saved, dict) or saved.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is a torch file but not a ds9_utils LoRA adapter (see save_adapter)")
    if saved["model_config"] != asdict(model.config):
        raise ValueError(
            f"the adapter at {path} was trained on a model shaped {saved['model_config']}, not "
            f"{asdict(model.config)}: load it onto its own base model"
        )
    if check_base and saved["base_fingerprint"] != base_fingerprint(model):
        raise ValueError(
            f"the adapter at {path} was trained on a base model with other weights (has the course "
            "model been retrained?); its outputs would differ. Pass check_base=False to load it anyway"
        )
    config = LoRAConfig(**{**saved["lora_config"], "targets": tuple(saved["lora_config"]["targets"])})
    add_lora(model, config)
    parameters = dict(model.named_parameters())
    expected = {name for name in parameters if name.endswith((".lora_A", ".lora_B"))}
    if set(saved["weights"]) != expected:
        raise ValueError(f"the adapter at {path} does not hold the weights its config describes; save it again")
    with torch.no_grad():
        for name, tensor in saved["weights"].items():
            parameters[name].copy_(tensor)
    return model


# ---------------------------------------------------------------------------------------------- accounting


class ParameterCount(NamedTuple):
    trainable: int
    total: int


def count_parameters(model: nn.Module) -> ParameterCount:
    """How many numbers training changes, and how many the model holds (tied weights counted once)."""
    parameters = list(model.parameters())  # each shared tensor appears once
    return ParameterCount(sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters))


def training_state_bytes(model: nn.Module) -> int:
    """Bytes of weights, gradients and AdamW state that training ``model`` keeps, activations left out.

    Every parameter is held once; each trainable one also has a gradient and AdamW's two moment estimates
    (``exp_avg`` and ``exp_avg_sq``) of its own size. This is the part of training memory that LoRA shrinks.
    """
    total = 0
    for parameter in model.parameters():
        size = parameter.numel() * parameter.element_size()
        total += size * (4 if parameter.requires_grad else 1)
    return total


# ---------------------------------------------------------------------------------------------- seeds


class SeedRun(NamedTuple):
    seed: int
    model: GPT  # the trained model, in eval mode
    result: TrainResult
    scores: dict[str, float]


def train_seeds(
    start: Callable[[], GPT],
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    config: TrainConfig,
    seeds: Iterable[int],
    score: Callable[[GPT], dict[str, float]],
    *,
    progress: bool = True,
) -> list[SeedRun]:
    """Run one recipe once per seed: ``start()`` builds the model, ``train`` trains it, ``score`` scores it.

    One run says little when two recipes differ by less than runs of the same recipe do. The seed is set
    before ``start()`` (it decides random weights and LoRA's ``A``) and is the config's seed (it decides the
    batches), so every seed is a different, repeatable run.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("train_seeds needs at least one seed, e.g. seeds=(0, 1)")
    runs = []
    for seed in seeds:
        set_seed(seed)
        model = start()
        result = train(model, train_data, val_data, replace(config, seed=seed), progress=progress)
        model.eval()
        runs.append(SeedRun(seed, model, result, score(model)))
    return runs


def mean_and_spread(values: Iterable[float]) -> tuple[float, float]:
    """The mean of ``values`` and their standard deviation (n - 1 in the denominator; 0 for a single value)."""
    values = list(values)
    if not values:
        raise ValueError("mean_and_spread needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
