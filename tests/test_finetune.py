"""LoRA from scratch: adapters start as the base model, train alone, merge exactly, and save and load exactly."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from ds9_utils.corpus import _episode_to_json
from ds9_utils.finetune import (
    LORA_TARGETS,
    LoRAConfig,
    LoRALinear,
    add_lora,
    base_fingerprint,
    character_split,
    character_text,
    characteristic_words,
    count_parameters,
    load_adapter,
    lora_state_dict,
    mean_and_spread,
    merge_lora,
    mix_general_lines,
    sample_scenes,
    save_adapter,
    spoken_mask,
    spoken_words,
    train_seeds,
    training_state_bytes,
)
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.optim import configure_optimizer
from ds9_utils.parse import Episode, Line, Scene
from ds9_utils.train import train
from ds9_utils.train_config import TrainConfig

CONFIG = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def base() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (3, CONFIG.block_size), generator=torch.Generator().manual_seed(1))


def randomise_adapters(model: GPT, seed: int = 2) -> None:
    """Give B non-zero values, as training would, so the adapters change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def test_zero_initialised_b_gives_exactly_the_base_outputs(base, tokens):
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8))
    assert torch.equal(adapted(tokens)[0], base(tokens)[0])
    assert all(torch.count_nonzero(module.lora_A) > 0 for module in adapted.modules() if isinstance(module, LoRALinear))


def test_adapters_wrap_every_target_of_every_block(base):
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=2, targets=("attn.qkv", "ffwd.proj")))
    wrapped = sorted(name for name, module in adapted.named_modules() if isinstance(module, LoRALinear))
    assert wrapped == ["blocks.0.attn.qkv", "blocks.0.ffwd.proj", "blocks.1.attn.qkv", "blocks.1.ffwd.proj"]
    assert not isinstance(adapted.blocks[0].attn.proj, LoRALinear)


def test_only_the_adapters_are_trainable_and_train_changes_only_them(base):
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8))
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    rank, n_embd = 4, CONFIG.n_embd
    per_block = rank * (n_embd + 3 * n_embd) + rank * 2 * n_embd + rank * (n_embd + 4 * n_embd) * 2
    assert count_parameters(adapted) == (
        CONFIG.n_layer * per_block,
        count_parameters(base).total + CONFIG.n_layer * per_block,
    )
    optimizer = configure_optimizer(adapted, TrainConfig())
    assert (
        sum(p.numel() for group in optimizer.param_groups for p in group["params"])
        == count_parameters(adapted).trainable
    )

    data = torch.randint(0, CONFIG.vocab_size, (400,), generator=torch.Generator().manual_seed(3))
    config = TrainConfig(
        batch_size=4,
        max_steps=5,
        warmup_steps=1,
        learning_rate=1e-2,
        min_lr=1e-3,
        eval_interval=5,
        eval_iters=1,
        device="cpu",
    )
    train(adapted, data, data, config, progress=False)
    base_state, adapted_state = base.state_dict(), adapted.state_dict()
    for name, tensor in adapted_state.items():
        if not name.endswith(("lora_A", "lora_B")):
            assert torch.equal(tensor, base_state[name.replace(".base.", ".")]), name
    assert any(torch.count_nonzero(p) for name, p in adapted.named_parameters() if name.endswith("lora_B"))


def test_merged_model_computes_what_the_adapter_model_computes(base, tokens):
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8))
    randomise_adapters(adapted)
    assert not torch.allclose(adapted(tokens)[0], base(tokens)[0], atol=1e-3)  # the adapters do something
    merged = merge_lora(adapted)
    assert type(merged) is GPT and not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(base.state_dict())
    assert all(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(merged(tokens)[0], adapted(tokens)[0], atol=1e-5, rtol=1e-5)
    assert any(isinstance(m, LoRALinear) for m in adapted.modules())  # the adapted model is left as it was
    module = adapted.blocks[0].attn.qkv
    expected = module.base.weight + 2.0 * module.lora_B @ module.lora_A  # alpha / rank = 8 / 4
    torch.testing.assert_close(merged.blocks[0].attn.qkv.weight, expected)


def test_a_saved_adapter_holds_only_the_adapters_and_reloads_exactly(base, tokens, tmp_path):
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8, targets=("attn.qkv", "ffwd.expand")))
    randomise_adapters(adapted)
    path = save_adapter(tmp_path / "adapters" / "quark.pt", adapted)
    assert sorted(p.name for p in path.parent.iterdir()) == ["quark.pt"]  # no temporary file left behind

    saved = torch.load(path, weights_only=True)
    assert set(saved["weights"]) == set(lora_state_dict(adapted))
    assert all(name.endswith(("lora_A", "lora_B")) for name in saved["weights"])
    adapter_numbers = sum(t.numel() for t in saved["weights"].values())
    assert adapter_numbers == count_parameters(adapted).trainable < count_parameters(base).total

    reloaded = load_adapter(path, copy.deepcopy(base))
    assert reloaded.lora_config == adapted.lora_config
    assert torch.equal(reloaded(tokens)[0], adapted(tokens)[0])
    assert torch.equal(merge_lora(reloaded)(tokens)[0], merge_lora(adapted)(tokens)[0])


def test_loading_an_adapter_onto_the_wrong_base_is_refused(base, tmp_path):
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=2))
    path = save_adapter(tmp_path / "a.pt", adapted)
    assert base_fingerprint(adapted) == base_fingerprint(base)

    other_weights = copy.deepcopy(base)
    with torch.no_grad():
        other_weights.ln_f.weight.add_(0.5)
    with pytest.raises(ValueError, match="other weights"):
        load_adapter(path, other_weights)
    load_adapter(path, other_weights, check_base=False)  # on request

    torch.manual_seed(0)
    other_shape = GPT(GPTConfig(vocab_size=23, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="shaped"):
        load_adapter(path, other_shape)

    with pytest.raises(FileNotFoundError, match="no adapter"):
        load_adapter(tmp_path / "missing.pt", copy.deepcopy(base))
    not_torch = tmp_path / "garbage.pt"
    not_torch.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable adapter"):
        load_adapter(not_torch, copy.deepcopy(base))
    other_torch = tmp_path / "other.pt"
    torch.save({"weights": {}}, other_torch)
    with pytest.raises(ValueError, match="not a ds9_utils LoRA adapter"):
        load_adapter(other_torch, copy.deepcopy(base))


@pytest.mark.parametrize("rank", [0, -1, 1.5, True, "8"])
def test_bad_rank_is_a_clear_error(rank):
    with pytest.raises(ValueError, match="rank must be a whole number"):
        LoRAConfig(rank=rank)


@pytest.mark.parametrize("alpha", [0, -2.0, math.nan, math.inf, False, "16"])
def test_bad_alpha_is_a_clear_error(alpha):
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        LoRAConfig(alpha=alpha)


@pytest.mark.parametrize("targets", ["attn.qkv", (), ("lm_head",), ("attn.qkv", "attn.q")])
def test_bad_targets_are_a_clear_error(targets):
    with pytest.raises(ValueError, match="targets"):
        LoRAConfig(targets=targets)


def test_misuse_is_a_clear_error(base):
    with pytest.raises(ValueError, match="rank 17 is larger"):
        add_lora(copy.deepcopy(base), LoRAConfig(rank=17))
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(adapted, LoRAConfig(rank=2))
    for function in (merge_lora, lora_state_dict):
        with pytest.raises(ValueError, match="no LoRA adapters"):
            function(base)
    with pytest.raises(ValueError, match="no linear layers"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoRAConfig(rank=2))
    assert LoRAConfig(targets=["attn.qkv"]).targets == ("attn.qkv",)
    assert set(LORA_TARGETS) == {"attn.qkv", "attn.proj", "ffwd.expand", "ffwd.proj"}


def test_training_state_bytes_matches_a_real_adamw_step(base):
    for model in (copy.deepcopy(base), add_lora(copy.deepcopy(base), LoRAConfig(rank=4))):
        optimizer = configure_optimizer(model, TrainConfig())
        x = torch.randint(0, CONFIG.vocab_size, (2, CONFIG.block_size))
        model(x, x)[1].backward()
        optimizer.step()
        parameters = list(model.parameters())
        measured = sum(p.numel() * p.element_size() for p in parameters)
        measured += sum(p.grad.numel() * p.grad.element_size() for p in parameters if p.grad is not None)
        measured += sum(
            t.numel() * t.element_size()
            for state in optimizer.state.values()
            for key, t in state.items()
            if key in ("exp_avg", "exp_avg_sq")
        )
        assert training_state_bytes(model) == measured


def episode(number: int, scenes: list[Scene]) -> Episode:
    return Episode(number=number, title=f"Episode {number}", stardate=None, airdate=None, scenes=scenes)


def test_character_text_keeps_one_speakers_lines_in_the_corpus_format():
    scenes = [
        Scene(
            "Quark's",
            [
                Line("dialogue", "QUARK", "Rom! Where's my latinum?"),
                Line("direction", None, "Rom hides"),
                Line("dialogue", "ROM", "Brother, I\u2026"),
                Line("dialogue", "QUARK", "Brother?", parenthetical="to Odo", modifier="OC"),
            ],
        ),
        Scene("Ops", [Line("dialogue", "KIRA", "Quark!")]),
        Scene("Promenade", [Line("dialogue", "QUARK", "Caf\u00e9 prices \u2014 outrageous.")]),
    ]
    text = character_text([episode(401, scenes)], "quark")
    assert text == (
        "QUARK: Rom! Where's my latinum?\nQUARK [OC]: (to Odo) Brother?\n\nQUARK: Cafe prices - outrageous.\n"
    )
    assert character_text([episode(401, scenes)], "GARAK") == ""


def test_character_split_follows_the_corpus_episode_split(tmp_path):
    lines = {
        number: [Scene("Bar", [Line("dialogue", "QUARK", f"Line of {number}."), Line("dialogue", "ODO", "Quark.")])]
        for number in (401, 402, 403)
    }
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    records = "".join(_episode_to_json(episode(number, scenes)) + "\n" for number, scenes in lines.items())
    (corpus / "episodes.jsonl").write_text(records, encoding="utf-8")
    (corpus / "split.json").write_text(json.dumps({"train": [401, 403], "val": [402], "test": []}), encoding="utf-8")
    texts = character_split("Quark", corpus)
    assert texts == {
        "train": "QUARK: Line of 401.\n\nQUARK: Line of 403.\n",
        "val": "QUARK: Line of 402.\n",
        "test": "",
    }
    (corpus / "split.json").write_text(json.dumps({"train": [401, 402], "val": [403], "test": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="'GARAK' speaks no line in the train episodes"):
        character_split("garak", corpus)


SCENE_TEXT = (
    "=== 401: Emissary ===\n\n"
    "[Quark's]\n"
    "QUARK: Rom! Profit!\n"
    "(Rom hides)\n"
    "ROM [OC]: (to Nog) Yes, brother.\n"
    "QUARK: Latinum.\n"
    "\n"
    "[Ops]\n"
    "KIRA: Quark: no.\n"
)


def scored(text: str, mask: torch.Tensor) -> str:
    """The characters a mask selects: entry j belongs to character j + 1, as in token_losses."""
    assert mask.dtype == torch.bool and len(mask) == len(text) - 1
    return "".join(text[j + 1] for j in range(len(mask)) if mask[j])


def test_spoken_mask_keeps_what_lines_say_and_leaves_out_tags_headings_and_directions():
    assert scored(SCENE_TEXT, spoken_mask(SCENE_TEXT)) == (
        "Rom! Profit!\n(to Nog) Yes, brother.\nLatinum.\nQuark: no.\n"
    )
    assert scored(SCENE_TEXT, spoken_mask(SCENE_TEXT, exclude="quark")) == "(to Nog) Yes, brother.\nQuark: no.\n"
    quark = "QUARK: Hello.\nQUARK [OC]: Bye."  # no newline at the end
    assert scored(quark, spoken_mask(quark)) == "Hello.\nBye."
    assert scored("Q", spoken_mask("Q")) == ""


def test_sample_scenes_draws_whole_scenes_from_the_whole_text_repeatably():
    text = "\n\n".join(f"[Bar]\nQUARK: Scene {n}." for n in range(40)) + "\n"
    scenes = set(text.strip().split("\n\n"))
    sample = sample_scenes(text, 100, seed=3)
    drawn = sample.strip().split("\n\n")
    assert set(drawn) <= scenes and len(set(drawn)) == len(drawn)
    assert len(sample) >= 100 and len(sample) - len(drawn[-1]) - 2 < 100  # stops once it holds enough
    assert sample == sample_scenes(text, 100, seed=3)
    assert sample != sample_scenes(text, 100, seed=4)
    assert drawn != sorted(drawn, key=lambda scene: int(scene.split()[-1].rstrip(".")))  # not the first pages
    with pytest.raises(ValueError, match="fewer than the 10,000 asked for"):
        sample_scenes(text, 10_000)


def test_mix_general_lines_adds_the_asked_share_of_general_scenes():
    character = "QUARK: Profit.\n" * 100
    general = "\n\n".join(f"[Ops]\nKIRA: Line {n}.\nSISKO: Yes." for n in range(200)) + "\n"
    mixed = mix_general_lines(character, general, 0.3, seed=1)
    assert mixed.startswith(character)
    share = mixed.count("KIRA") * len("[Ops]\nKIRA: Line 100.\nSISKO: Yes.\n\n") / len(mixed)
    assert 0.27 < share < 0.33
    assert mix_general_lines(character, general, 0.0) == character
    for bad in (1.0, -0.1, True, "0.3"):
        with pytest.raises(ValueError, match="general_share must be a fraction"):
            mix_general_lines(character, general, bad)


def test_train_seeds_repeats_a_seed_exactly_and_varies_between_seeds():
    data = torch.randint(0, CONFIG.vocab_size, (400,), generator=torch.Generator().manual_seed(3))
    config = TrainConfig(batch_size=4, max_steps=3, warmup_steps=1, eval_interval=3, eval_iters=1, device="cpu")
    started = []

    def start() -> GPT:
        started.append(1)
        return GPT(CONFIG)  # random weights: the seed decides them

    def score(model: GPT) -> dict[str, float]:
        assert not model.training
        return {"loss": model(data[None, :16], data[None, 1:17])[1].item()}

    runs = train_seeds(start, data, data, config, (0, 1, 0), score, progress=False)
    assert len(started) == 3 and [run.seed for run in runs] == [0, 1, 0]
    assert runs[0].scores == runs[2].scores and runs[0].scores != runs[1].scores
    assert all(run.result.steps == 3 for run in runs)
    with pytest.raises(ValueError, match="at least one seed"):
        train_seeds(start, data, data, config, (), score)


def test_mean_and_spread():
    assert mean_and_spread([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_and_spread([1.5]) == (1.5, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        mean_and_spread([])


def test_characteristic_words_are_what_one_speaker_says_more_often_than_everyone():
    assert spoken_words(SCENE_TEXT) == ["rom", "profit", "to", "nog", "yes", "brother", "latinum", "quark", "no"]
    quark = "QUARK: Latinum, brother! Profit.\n" * 40 + "QUARK: Yes.\n" * 40 + "QUARK: Morn.\n" * 5
    general = "KIRA: Yes, Major.\nODO: Yes. Latinum.\n" * 200 + "SISKO: Profit?\n"
    assert characteristic_words(quark, general, n=3) == ["brother", "profit", "latinum"]
    assert "morn" not in characteristic_words(quark, general, n=10)  # said 5 times: too rare to rank
    assert "morn" in characteristic_words(quark, general, n=10, min_count=5)
    with pytest.raises(ValueError, match="needs speaker lines"):
        characteristic_words(quark, "(Everyone leaves)")
