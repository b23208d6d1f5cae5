"""The self-checking exercises: every reference solution passes its check, broken answers are caught with a
specific message, solutions stay hidden, and every notebook's exercise cells match the registry."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import time
from collections import Counter
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

from ds9_utils import exercises
from ds9_utils.exercises import Exercise, all_exercises, check, problems, solution

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXERCISES = all_exercises()
CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\d+)["']""")
SOLUTION_CALL = re.compile(r"""\bsolution\(\s*["'](\d\d\.\d+)["']\s*\)""")


def printed(function, *args) -> tuple[object, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = function(*args)
    return result, out.getvalue()


def perturbed(value):
    """The same answer, slightly wrong: numbers moved, flags flipped, a module's output shifted."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, torch.Tensor):
        return ~value if value.dtype == torch.bool else value + 1
    if isinstance(value, np.ndarray):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, (list, tuple)):
        return type(value)(perturbed(item) for item in value) if value else [0]
    if isinstance(value, (dict, Counter)):
        return {key: perturbed(item) for key, item in value.items()} if value else {"?": 1}
    if isinstance(value, nn.Module):
        return _Shifted(value)
    if callable(value):
        return lambda *args, **kwargs: perturbed(value(*args, **kwargs))
    raise AssertionError(f"the test cannot perturb a {type(value).__name__}: teach perturbed() about it")


class _Shifted(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return perturbed(self.module(*args, **kwargs))


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_the_reference_solution_passes_its_check(exercise_id):
    exercise = EXERCISES[exercise_id]
    assert problems(exercise, exercise.reference()) == []
    right, output = printed(check, exercise_id, exercise.reference())
    assert bool(right) is True
    assert output.startswith("✅ right: ")


def test_a_check_cell_shows_only_its_printed_line():
    """In a notebook the verdict adds no stray ``True``/``False`` under the printed line, yet it is truthful."""
    exercise_id = next(iter(EXERCISES))
    wrong, output = printed(check, exercise_id, None)
    assert not wrong and output.startswith("❌ not yet: ")
    right, _ = printed(check, exercise_id, EXERCISES[exercise_id].reference())
    assert right and repr(right) == "right" and repr(wrong) == "not yet"
    assert right._ipython_display_() is None  # IPython calls this instead of showing a repr


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_a_wrong_answer_is_reported_specifically(exercise_id):
    exercise = EXERCISES[exercise_id]
    reference = exercise.reference()
    if exercise.expects == "function":
        wrong_answers = [lambda *args, **kwargs: None, lambda *args, **kwargs: perturbed(reference(*args, **kwargs))]
    else:
        wrong_answers = [perturbed(reference)]
    for wrong in wrong_answers:
        right, output = printed(check, exercise_id, wrong)
        assert bool(right) is False
        assert output.startswith("❌ not yet: ")
        assert output.count("\n") == 1, "one line per check"
        assert "your answer raised" not in output, f"the check crashed on a wrong answer instead of comparing: {output}"


def test_unfinished_answers_are_reported_never_raised():
    def unwritten(*args):
        raise NotImplementedError

    def crashes(*args):
        return [][1]

    for answer, expected in [
        (None, "there is no answer yet"),
        (..., "there is no answer yet"),
        (unwritten, "not written yet"),
        (crashes, "your answer raised IndexError: list index out of range"),
        (42, "expected a function, got int"),
    ]:
        right, output = printed(check, "05.2", answer)
        assert bool(right) is False
        assert expected in output


def test_a_solution_is_hidden_until_asked_for():
    calls = []

    def reference():
        calls.append("ran")
        return 41 + 1

    exercise = Exercise(
        "99.1", "A test exercise", lambda answer: [] if answer == 42 else ["not 42"], reference, expects="value"
    )
    exercises.register(exercise)
    try:
        view = solution("99.1")
        page = view._repr_html_()
        assert page.startswith("<details><summary>Show the solution to exercise 99.1")
        assert page.rstrip().endswith("</details>")
        assert "41 + 1" in page and "return" in page
        assert "solution('99.1').run()" in repr(view)
        assert calls == [], "showing a solution must not run it"
        assert view.run() == 42 and calls == ["ran"]
    finally:
        exercises._REGISTRY.pop("99.1")


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_every_solution_shows_its_source_escaped(exercise_id):
    page = solution(exercise_id)._repr_html_()
    assert page.startswith("<details>") and "<pre>" in page
    assert re.search(r"\b(def|class) ", page)
    assert "<pre>" not in page.split("<pre>", 1)[1], "the source must be HTML-escaped"


def test_an_unknown_exercise_says_which_exist():
    with pytest.raises(KeyError, match=r"there is no exercise '05\.9'; the exercises are 00\.1"):
        check("05.9", None)


def _code_cells(notebook_path: Path) -> list[str]:
    return [cell.source for cell in nbformat.read(notebook_path, as_version=4).cells if cell.cell_type == "code"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_a_notebooks_exercises_are_registered_with_check_and_solution_cells(notebook):
    chapter = notebook.name[:2]
    cells = _code_cells(notebook)
    checked = {match for source in cells for match in CHECK_CALL.findall(source)}
    shown = {match for source in cells for match in SOLUTION_CALL.findall(source)}
    registered = {exercise_id for exercise_id in EXERCISES if exercise_id.startswith(chapter + ".")}
    assert checked <= set(EXERCISES), f"checks of exercises that do not exist: {checked - set(EXERCISES)}"
    assert checked == registered, f"registered for chapter {chapter} but not checked in it: {registered - checked}"
    assert shown == registered, f"exercises without a solution cell: {registered - shown}"
    if registered:
        assert any("from ds9_utils.exercises import check, solution" in source for source in cells)
        markdown = [cell.source for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "markdown"]
        assert not any(source.strip() == "**Solution**" for source in markdown), "an old solution cell is left"


def _exercise_section(notebook: Path) -> list[nbformat.NotebookNode]:
    cells = nbformat.read(notebook, as_version=4).cells
    start = next(i for i, cell in enumerate(cells) if cell.source.startswith("## Exercises"))
    end = next(i for i, cell in enumerate(cells) if cell.source.startswith("## Next"))
    return cells[start:end]


@pytest.mark.parametrize("notebook", NOTEBOOKS[:8], ids=lambda path: path.stem)
def test_the_exercise_cells_run_on_their_own_and_call_the_starters_not_yet(notebook):
    section = _exercise_section(notebook)
    namespace: dict = {}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for cell in section:
            if cell.cell_type == "code":
                exec(compile(cell.source, f"{notebook.name} cell {cell.get('id')}", "exec"), namespace)
    lines = output.getvalue().splitlines()
    ids = [exercise_id for cell in section for exercise_id in CHECK_CALL.findall(cell.source)]
    assert len(ids) >= 3
    assert [line.split(":")[0] for line in lines] == ["❌ not yet"] * len(ids)


def _verdict(exercise_id: str, answer) -> str:
    right, output = printed(check, exercise_id, answer)
    assert bool(right) is False
    return output


def test_the_rotary_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch09
    from ds9_utils.model import rotate

    assert "minus the angle" in _verdict("09.4", lambda x, cos, sin: rotate(x, cos, -sin))
    assert "paired neighbours (x[2i], x[2i+1])" in _verdict("09.4", ch09._rotate_neighbours)
    unconverted = _verdict("09.4", lambda x, cos, sin: rotate(x.float(), cos, sin))
    assert "returns torch.float32, expected torch.bfloat16" in unconverted
    assert "is off at index" in _verdict("09.4", lambda x, cos, sin: x)


def test_the_newton_schulz_exercise_names_the_typical_mistakes():
    from ds9_utils.optim import NEWTON_SCHULZ, orthogonalize

    def unnormalised(matrix):
        a, b, c = NEWTON_SCHULZ
        x = matrix
        for _ in range(5):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        return x

    assert "divide the matrix by its norm" in _verdict("09.5", unnormalised)
    assert "you ran 3 Newton-Schulz steps; take 5" in _verdict("09.5", lambda matrix: orthogonalize(matrix, steps=3))
    assert "is off at index" in _verdict("09.5", lambda matrix: matrix)


# ---------------------------------------------------------------------------------------------- not fooled


class EqualsEverything:
    """An answer that says it equals whatever it is compared with."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


class EqualsEverythingInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("answer", [EqualsEverything(), EqualsEverythingInt(7)], ids=["object", "int subclass"])
def test_an_answer_that_equals_everything_fails_00_1(answer):
    right, line = printed(check, "00.1", lambda corpus, name: answer)
    assert not right and "should be of type int, got EqualsEverything" in line


def test_equal_problem_compares_exact_types_all_the_way_down():
    assert exercises.equal_problem("x", [1, "a"], [1, "a"]) is None
    assert exercises.equal_problem("x", {"a": [1, 2]}, {"a": [1, 2]}) is None
    assert "should be of type list, got tuple" in exercises.equal_problem("x", (1, 2), [1, 2])
    assert "should be of type int, got bool" in exercises.equal_problem("x", True, 1)
    assert exercises.equal_problem("x", [EqualsEverything()], ["a"]) is not None
    assert exercises.equal_problem("x", {"a": EqualsEverything()}, {"a": 1}) is not None
    assert exercises.equal_problem("x", {EqualsEverything(): 1}, {"a": 1}) is not None


class AlwaysClose(torch.Tensor):
    """A tensor that answers for itself: its methods say it is close to anything, and so would torch's
    functions called on it, through __torch_function__."""

    def allclose(self, *args, **kwargs):
        return True

    def detach(self):
        return self

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("allclose", "isclose", "equal"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tensor_subclass_that_overrides_allclose_fails_close_problem():
    fake = torch.zeros(2, 3).as_subclass(AlwaysClose)
    assert torch.allclose(fake, torch.ones(2, 3)), "the fake would fool a comparison through torch's functions"
    problem = exercises.close_problem("probs", fake, torch.ones(2, 3))
    assert problem == "probs is off at index (0, 0): expected 1, got 0"
    assert exercises.close_problem("probs", torch.ones(2, 3).as_subclass(AlwaysClose), torch.ones(2, 3)) is None
    right, line = printed(check, "03.1", lambda counts, k: torch.zeros(counts.shape).as_subclass(AlwaysClose))
    assert not right and "is off at index" in line


def test_an_endless_answer_fails_within_the_time_limit(monkeypatch):
    monkeypatch.setattr(exercises, "CHECK_SECONDS", 0.5)

    def endless(corpus, name):
        while True:
            try:
                pass
            except Exception:  # a loop that swallows errors does not swallow the time limit
                pass

    started = time.monotonic()
    right, line = printed(check, "00.1", endless)
    assert not right and "did not finish within 0.5 s" in line and "loop" in line
    assert time.monotonic() - started < 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the timer is switched off after the check"


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX interval timers")
def test_a_timer_already_running_is_left_alone():
    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        right, _ = printed(check, "00.1", solution("00.1").run())
        assert right and 90 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def test_the_batch_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch05

    assert "targets y are the inputs x" in _verdict("05.4", ch05._batch_without_shift)
    assert "torch.randint(len(data) - block_size" in _verdict("05.4", ch05._batch_short_of_the_end)
    swapped = _verdict(
        "05.4", lambda data, block_size, batch_size, g: ch05.get_batch(data, block_size, batch_size, g)[::-1]
    )
    assert "is off at index" in swapped


def test_the_top_p_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch10

    assert "keep the token that crosses it too" in _verdict("10.4", ch10._top_p_short)
    assert "did not divide by what is left" in _verdict("10.4", ch10._top_p_unnormalised)
    assert "is off at index" in _verdict("10.4", lambda probs, top_p: probs)


def test_the_backoff_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch04

    assert "the number of *different* tokens" in _verdict("04.4", ch04._witten_bell_all_counts)
    assert "mix in the shorter context" in _verdict("04.4", ch04._witten_bell_no_lower)
    assert "is off at index" in _verdict("04.4", lambda counts, lower: lower)


def test_the_lora_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch13

    assert "without its scale" in _verdict("13.4", ch13._lora_unscaled)
    assert "the scale is alpha / rank" in _verdict("13.4", ch13._lora_scaled_by_alpha)
    assert "is off at index" in _verdict("13.4", lambda x, weight, lora_A, lora_B, alpha: x @ weight.T)


def test_the_dpo_loss_exercise_names_the_typical_mistakes():
    import torch

    from ds9_utils.exercises import ch14

    assert "wrong way round" in _verdict("14.4", ch14._dpo_swapped)
    assert "you left out beta" in _verdict("14.4", ch14._dpo_without_beta)

    def naive(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
        margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
        return -torch.log(torch.sigmoid(beta * margin)).mean()

    assert "use F.logsigmoid" in _verdict("14.4", naive)


def test_the_kv_cache_exercise_names_the_typical_mistakes():
    import torch

    from ds9_utils.exercises import ch10

    assert "a position sees itself too" in _verdict("10.5", ch10._step_without_itself)
    assert "not divided by sqrt(d)" in _verdict("10.5", ch10._step_unscaled)
    assert "the key cache after every step" in _verdict("10.5", lambda q, k, v, kc, vc: (torch.zeros_like(q), kc, vc))
    assert "should return (out, k_cache, v_cache)" in _verdict("10.5", lambda q, k, v, kc, vc: None)


def test_the_heads_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch06

    assert "which mixes positions" in _verdict("06.4", ch06._split_without_transpose)
    assert "merged the heads with a reshape alone" in _verdict("06.4", ch06._merge_without_transpose)
    assert "is off at index" in _verdict("06.4", lambda q, k, v, n_head: v)
    assert "expected (2, 5, 8): merge the heads back" in _verdict(
        "06.4", lambda q, k, v, n_head: q.view(2, 5, n_head, -1).transpose(1, 2)
    )


def test_the_block_forward_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch07

    assert "keep the residual paths" in _verdict("07.4", ch07._block_without_residuals)
    assert "added each part's output to the normalised x" in _verdict("07.4", ch07._block_adds_to_the_norm)
    assert "is off at index" in _verdict("07.4", lambda block, x: x + block.attn(block.ln_1(x)))


def test_the_sinusoidal_table_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch08

    assert "sines and cosines swapped" in _verdict("08.4", ch08._table_swapped)
    assert "not the pair's index i" in _verdict("08.4", ch08._table_pair_index)
    assert "is off at index" in _verdict("08.4", lambda block_size, n_embd: torch.zeros(block_size, n_embd))


def test_the_bigram_table_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch03

    assert "your rows are the *next* character" in _verdict("03.4", ch03._table_transposed)
    assert "which gives P(a and b)" in _verdict("03.4", ch03._table_joint)
    assert "is off at index" in _verdict("03.4", lambda ids, vocab_size, k: ch03.bigram_table(ids, vocab_size, 0.0))


def test_the_schedule_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch09

    assert "your warm-up starts at 0" in _verdict("09.2", ch09._rate_warming_from_zero)
    assert "it should end at min_lr" in _verdict("09.2", ch09._rate_decaying_to_zero)
    assert "learning_rate_at(0, cfg)" in _verdict("09.2", lambda step, cfg: cfg.learning_rate)


def test_the_wsd_schedule_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch09

    assert "it should stay at learning_rate" in _verdict("09.6", ch09._wsd_decaying_all_the_way)
    assert "your decay takes 1 - decay_share" in _verdict("09.6", ch09._wsd_share_read_as_stable)
    assert "wsd_rate(" in _verdict("09.6", ch09.learning_rate_at)  # the cosine of 09.2 is not wsd


def test_the_surprisal_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch11

    assert "these are nats" in _verdict("11.4", ch11._surprisal_in_nats)
    assert "your softmax ran down the positions" in _verdict("11.4", ch11._surprisal_over_positions)
    assert "is off at index" in _verdict("11.4", lambda logits, targets: -logits[torch.arange(len(targets)), targets])


def test_the_bpe_exercises_name_the_typical_mistakes():
    from ds9_utils.exercises import ch12

    assert "one id per character (ord)" in _verdict("12.4", ch12._encode_code_points)
    assert "replay the merges in the order they were learned" in _verdict("12.4", ch12._encode_most_frequent_first)
    assert "the 80 merges): expected [" in _verdict("12.4", lambda text, merges: list(text.encode("utf-8")))
    assert "not 1" in _verdict("12.5", ch12._train_ignoring_counts)
    assert "count again after every merge" in _verdict("12.5", ch12._train_counting_once)
    reversed_ties = _verdict(
        "12.5", lambda piece_counts, n: ch12.train_bpe_from_pieces(piece_counts, n)[:1] + [(0, 0)] * (n - 1)
    )
    assert "merge 1 (token 257) should be" in reversed_ties


def test_the_gradient_accumulation_exercise_names_the_typical_mistakes():
    def undivided(model, xb, yb, micro_batches):
        model.zero_grad()
        for rows in torch.tensor_split(torch.arange(len(xb)), micro_batches):
            model(xb[rows], yb[rows])[1].backward()
        return [parameter.grad.clone() for parameter in model.parameters()]

    def onto_stale(model, xb, yb, micro_batches):
        for rows in torch.tensor_split(torch.arange(len(xb)), micro_batches):
            (model(xb[rows], yb[rows])[1] / micro_batches).backward()
        return [parameter.grad.clone() for parameter in model.parameters()]

    assert "divide it by the number of micro-batches" in _verdict("15.3", undivided)
    assert "call model.zero_grad() before the first" in _verdict("15.3", onto_stale)


def test_the_modern_block_exercises_name_the_typical_mistakes():
    from ds9_utils.exercises import ch07

    assert "that is LayerNorm" in _verdict("07.5", ch07._rms_norm_centred)
    assert "take its square root first" in _verdict("07.5", ch07._rms_norm_without_root)
    assert "is off at index" in _verdict("07.5", lambda x, weight, eps=1e-6: x * weight)
    assert "that is plain ReLU" in _verdict("07.6", ch07._feed_forward_relu)
    assert "squared before the ReLU" in _verdict("07.6", ch07._feed_forward_square_first)
    assert "is off at index" in _verdict(
        "07.6", lambda x, expand, project: torch.nn.functional.gelu(x @ expand.T) @ project.T
    )


def test_the_qk_norm_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch06

    assert "one root mean square over all the heads" in _verdict("06.5", ch06._qk_norm_whole_vector)
    assert "your mean ran down the positions" in _verdict("06.5", ch06._qk_norm_over_positions)
    assert "is off at index" in _verdict("06.5", lambda q, k, q_gain, k_gain: (q, k))
    assert "should return the pair (q, k)" in _verdict("06.5", lambda q, k, q_gain, k_gain: q)


def test_the_zero_init_and_untied_head_exercises_name_the_typical_mistakes():
    from ds9_utils.exercises import ch08

    def every_linear(model):
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.weight.zero_()
        return model

    def attention_only(model):
        with torch.no_grad():
            for block in model.blocks:
                block.attn.proj.weight.zero_()
        return model

    assert "nothing flows through the block" in _verdict("08.5", every_linear)
    assert "these still start random: blocks.0.ffwd.proj.weight" in _verdict("08.5", attention_only)

    def still_tied(model):
        model.lm_head.weight = model.token_embedding.weight
        return model

    def shares_memory(model):
        model.lm_head.weight = nn.Parameter(model.token_embedding.weight)
        return model

    assert "still one Parameter" in _verdict("08.6", still_tied)
    assert "clone() the values" in _verdict("08.6", shares_memory)
    assert "starting values" in _verdict("08.6", lambda model: ch08.untie_head(every_linear(model)))


def test_the_masked_attention_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch05

    assert "you masked after the softmax" in _verdict("05.2", ch05._weights_masked_after_softmax)
    assert "exp(0) = 1 still gives them weight" in _verdict("05.2", ch05._weights_masked_with_zero)


def test_the_temperature_top_k_exercise_names_the_typical_mistakes():
    from ds9_utils.exercises import ch10

    assert "after the softmax, so the row no longer sums to 1" in _verdict("10.6", ch10._top_k_after_softmax)
    assert "divide them by it" in _verdict("10.6", ch10._temperature_multiplied)
    assert "is off at index" in _verdict("10.6", lambda logits, temperature, top_k: torch.softmax(logits, dim=-1))


def test_the_readme_lists_every_build_it_exercise_by_chapter():
    """The README's "Build it yourself" table is the registry's list: a new mechanism exercise shows up there."""
    from collections import defaultdict

    from ds9_utils.exercises import build_it_exercises

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Build it yourself", 1)[1].split("\n## ", 1)[0]
    listed = {
        row.split("|")[1].strip(): row.split("|")[2].strip()
        for row in section.splitlines()
        if re.match(r"\| \d\d \|", row)
    }
    expected = defaultdict(list)
    for exercise_id, exercise in build_it_exercises().items():
        expected[exercise_id[:2]].append(f"{exercise.builds} ({exercise_id})")
    assert listed == {chapter: "; ".join(items) for chapter, items in expected.items()}
    assert set(listed) >= {f"{chapter:02d}" for chapter in range(3, 16)}, "every chapter from 03 to 15 has one"
