"""Command line: ``ds9 [download|corpus|train|generate]``, or ``python -m ds9_utils ...`` (the same).

Without a command it runs the whole job: download the transcripts (when they are not cached), build the
corpus, train the model that suits this machine (resuming an interrupted run, reusing a finished one) and
print a new scene.

A thin layer over the library: parse arguments, call one function, print a short summary whose last line
is one JSON object (so scripts and tests can read it), and turn known problems into one clear line on
stderr. Exit status: 0 done, 1 a failure (a download, a full disk...), 2 a usage error (bad arguments, or
a file that is not a good checkpoint), 130 interrupted with Ctrl-C. ``ds9_utils.distributed`` shares the
argument types and the error handling defined here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from .download import DownloadConfig, DownloadError, download_transcripts
from .files import DamagedFileError, FileInUseError, sole_writer

DEFAULT_PROMPT = "[Quark's]\n"
MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflows to inf; use 0 for greedy decoding
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    """Arguments that cannot work together (e.g. ``--resume`` with no run to resume): exit status 2."""


class Interrupted(Exception):
    """Ctrl-C, with the line that says how to carry on."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: ``error: ...`` and where to read the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


# ---------------------------------------------------------------------------------------------- argument types


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def whole_number(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text}")
        return value

    parse.__name__ = "whole number"
    return parse


def positive_seconds(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def temperature(text: str) -> float:
    value = _number(text, float)
    if value != 0 and not value >= MIN_TEMPERATURE:
        raise argparse.ArgumentTypeError(
            f"must be 0 (always the most likely character) or at least {MIN_TEMPERATURE} (higher is more varied), "
            f"got {text}"
        )
    return value


def probability_mass(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability above 0 and at most 1, got {text}")
    return value


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes no more


def seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2**63-1 ({MAX_SEED}), got {text}")
    return value


def prompt(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("is empty; give the text to continue, such as --prompt 'QUARK:'")
    return text


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_under(path: Path, flag: str) -> None:
    """Refuse ``path`` when a file stands where a folder must be, or its folder cannot be written."""
    existing = _first_existing(path.parent)
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {existing} is a file, not a folder; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: cannot write in {existing} (permission denied)")


def folder(text: str) -> Path:
    """A folder to keep data in: created when missing, so it only has to be writable."""
    path = Path(text).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    _check_writable_under(path / "x", "--data-dir")
    return path


def output_file(text: str) -> Path:
    """A file to write (a checkpoint): not a folder, and in a folder that can be written."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give the path of a file, e.g. {path / 'model.pt'}")
    _check_writable_under(path.absolute(), "--out")
    return path


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=folder, help="data folder (default $DS9_DATA_DIR or data/)")


def add_training_arguments(
    parser: argparse.ArgumentParser, *, out_help: str, out_type: Callable = output_file, out_required: bool = False
) -> None:
    """The arguments ``train`` and ``ds9_utils.distributed`` share, with the same checks."""
    from .presets import PRESETS

    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="model and recipe (default: quick in quick mode, gpu on CUDA, otherwise cpu; with --max-seconds on a "
        "CPU, the one made for the largest budget that fits in it)",
    )
    parser.add_argument("--text", type=Path, help="train on this UTF-8 file, split 90/10, instead of DS9")
    parser.add_argument("--max-steps", type=whole_number(1), help="stop after this many steps (default: the preset's)")
    parser.add_argument("--max-seconds", type=positive_seconds, help="stop after this many seconds of training")
    parser.add_argument("--out", type=out_type, required=out_required, help=out_help)
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    add_data_dir(parser)


# ---------------------------------------------------------------------------------------------- the commands


def _print_json(summary: dict) -> None:
    print(json.dumps(summary))


def cmd_download(args: argparse.Namespace) -> int:
    report = download_transcripts(args.base_url, args.data_dir, DownloadConfig(delay=args.delay), progress=True)
    print(
        f"downloaded {len(report.downloaded)} pages, {len(report.cached)} already cached, "
        f"{len(report.failed)} failed, in {report.seconds:.1f} s"
    )
    for failure in report.failed:
        print(f"  failed: {failure['page']}: {failure['reason']}")
    _print_json(report.to_dict())
    if report.failed and not (report.downloaded or report.cached):
        print(
            f"error: every page failed ({len(report.failed)} of them, reasons above); check --base-url / "
            "DS9_BASE_URL and your connection, then run again",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from .corpus import build_corpus
    from .settings import corpus_dir, pages_dir

    summary = build_corpus(pages_dir(args.data_dir), corpus_dir(args.data_dir))
    info = summary.to_dict()
    for page, reason in summary.dropped_reasons.items():
        print(f"warning: left {page} out of the corpus: {reason}", file=sys.stderr)
    print(f"episodes: {info['episodes']}, characters: {info['characters']:,}, vocabulary: {info['vocab_size']}")
    print("top speakers: " + ", ".join(f"{name} ({count})" for name, count in info["top_speakers"][:10]))
    _print_json(info)
    return 0


def _training_data(text_file: Path | None, data: Path | None):
    """The DS9 corpus (downloaded and built when missing), or any UTF-8 text file split 90/10."""
    from .course import load_course_data, text_file_data
    from .workspace import ensure_corpus

    return load_course_data(ensure_corpus(data)) if text_file is None else text_file_data(text_file)


def _check_windows_fit(data, preset: str, text_file: Path | None) -> None:
    """Refuse a text too short for the preset's window here, in the command line's terms: the training loop's
    own error would advise a smaller ``block_size``, which is no option of this command."""
    from .presets import PRESETS

    window = PRESETS[preset].model_kwargs["block_size"] + 1
    shortest = min(len(data.train), len(data.val))
    if shortest >= window:
        return
    fitting = [name for name, other in PRESETS.items() if other.model_kwargs["block_size"] < shortest]
    source = f"--text {text_file}" if text_file is not None else "the corpus"
    raise UsageError(
        f"{source} is too short for the {preset!r} preset: its validation part has {shortest} tokens, and the "
        f"preset reads windows of {window}; use a longer text"
        + (f", or a preset with a shorter window (--preset {' or '.join(fitting)})" if fitting else "")
    )


def program_name() -> str:
    """How this command was started, to repeat it in help and hints: ``ds9`` (the console script that
    pyproject.toml installs) or ``python -m ds9_utils``."""
    return "ds9" if Path(sys.argv[0]).stem == "ds9" else "python -m ds9_utils"


def _resume_command(argv: list[str]) -> str:
    return shlex.join([*program_name().split(), *argv, *([] if "--resume" in argv else ["--resume"])])


def cmd_train(args: argparse.Namespace) -> int:
    from .course import course_checkpoint_path, train_course_model
    from .presets import default_preset
    from .settings import checkpoints_dir, resolve_device

    device = resolve_device()  # a bad DS9_DEVICE is reported before anything is downloaded or built
    preset = args.preset or default_preset(device, args.max_seconds)
    if args.out is not None:
        out = args.out
    elif args.text is None:
        out = course_checkpoint_path(preset, args.data_dir)
    else:
        out = checkpoints_dir(args.data_dir) / f"{args.text.stem}.pt"
    with sole_writer(out, "--out"):  # a second run on the same file is refused, not interleaved with this one
        if args.resume and not out.is_file():
            raise UsageError(f"--resume: there is no run to continue at {out}; check --out, or leave out --resume")
        if out.exists() and not args.resume:
            raise UsageError(
                f"{out} already exists: pass --resume to continue that run, or --out NEW.pt to start another"
            )
        data = _training_data(args.text, args.data_dir)
        _check_windows_fit(data, preset, args.text)
        try:
            _, result = train_course_model(
                data,
                preset=preset,
                checkpoint_path=out,
                resume=args.resume,
                max_steps=args.max_steps,
                max_seconds=args.max_seconds,
                device=device,
            )
        except KeyboardInterrupt:
            if out.is_file():
                command = _resume_command(args.argv)
                raise Interrupted(f"interrupted: {out} holds the run so far; continue it with: {command}") from None
            raise Interrupted(
                "interrupted before the first checkpoint was written; run the same command again"
            ) from None
    print(
        f"validation loss {result.val_loss:.4f} nats = {result.val_bpc:.4f} bits per character after "
        f"{result.steps} steps ({result.stop_reason}) of the {preset!r} preset; checkpoint: {out}"
    )
    _print_json(
        {
            "preset": preset,
            "val_loss": result.val_loss,
            "val_bpc": result.val_bpc,
            "steps": result.steps,
            "tokens_per_second": result.tokens_per_second,
            "seconds": result.seconds,
            "checkpoint": str(out),
        }
    )
    return 0


def _write_scene(
    checkpoint: Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
) -> None:
    """Print the prompt, then the scene as it is written: Ctrl-C keeps everything printed so far."""
    import torch

    from .checkpoints import load_checkpoint
    from .corpus import SCENE_SEPARATOR
    from .generate import stream_text

    loaded = load_checkpoint(checkpoint)
    if loaded.tokenizer is None:
        raise ValueError(f"{checkpoint} holds no tokenizer, so its tokens cannot be turned into text")
    try:
        loaded.tokenizer.encode(prompt)
    except ValueError as error:
        raise UsageError(f"--prompt: {error}") from None
    device = next(loaded.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    print(prompt, end="", flush=True)
    pieces = stream_text(
        loaded.model,
        loaded.tokenizer,
        prompt,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        stop_text=SCENE_SEPARATOR,
    )
    for piece in pieces:
        print(piece, end="", flush=True)
    print(flush=True)


def cmd_generate(args: argparse.Namespace) -> int:
    from .course import find_course_checkpoint
    from .settings import checkpoints_dir

    checkpoint = args.checkpoint or find_course_checkpoint(args.data_dir)
    if checkpoint is None:
        raise FileNotFoundError(
            f"no course model in {checkpoints_dir(args.data_dir)}: train one with `python -m ds9_utils` "
            "(or `python -m ds9_utils train`), or pass --checkpoint"
        )
    _write_scene(checkpoint, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    return 0


def cmd_main_job(args: argparse.Namespace) -> int:
    from .course import course_checkpoint_path, train_course_model
    from .presets import default_preset
    from .settings import choose_device

    device = choose_device()
    preset = default_preset(device)
    print(f"DS9 - Let's Build an LLM: the '{preset}' model on {device}. Step 1: the transcripts and the corpus.")
    data = _training_data(None, None)
    print(f"Step 2: training ({data}); an interrupted run resumes where it stopped.", flush=True)
    with sole_writer(course_checkpoint_path(preset), "--out of `train`"):
        _, result = train_course_model(data, preset=preset, device=device)
    print(
        f"validation loss {result.val_loss:.3f} nats = {result.val_bpc:.3f} bits per character "
        f"after {result.steps} steps. Step 3: a new scene.\n"
    )
    _write_scene(course_checkpoint_path(preset), DEFAULT_PROMPT, 800, 0.8, None, None, args.seed)
    print(_what_longer_runs_give(result.steps))
    return 0


def _what_longer_runs_give(steps: int) -> str:
    """The stored budget curve, after the main job's time-budgeted run: what more steps of the same recipe buy."""
    from .budget_curve import curve_table, read_curve
    from .presets import COURSE_PRESET, COURSE_STEPS

    return (
        f"\nThis run trained {steps:,} steps. What longer runs of the same recipe gave on a 2-core CPU (the test "
        "episodes, in bits per character; the sample is each model's first line from one prompt and seed):\n"
        f"{curve_table(read_curve())}\n"
        f"Notebook 09's course model trains {COURSE_STEPS:,} steps: `{program_name()} train --preset "
        f"{COURSE_PRESET}` trains it from the command line."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=program_name(), description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", parser_class=Parser)
    resume_hint = "interrupted: everything written so far is complete; run the same command again to continue"

    down = commands.add_parser("download", help="download the transcripts into the cache")
    down.add_argument("--base-url", help="site root (default $DS9_BASE_URL or http://www.chakoteya.net/)")
    add_data_dir(down)
    down.add_argument("--delay", type=float, help="seconds between requests (default $DS9_DOWNLOAD_DELAY or 1)")
    down.set_defaults(run=cmd_download)

    corpus = commands.add_parser("corpus", help="parse the cached pages into the training corpus and its split")
    add_data_dir(corpus)
    corpus.set_defaults(run=cmd_corpus)

    train = commands.add_parser("train", help="train a GPT on the DS9 corpus (or any text) and checkpoint it")
    add_training_arguments(train, out_help="checkpoint file (default: the preset's in <data dir>/checkpoints)")
    train.set_defaults(run=cmd_train)

    gen = commands.add_parser("generate", help="write a scene with a trained model")
    gen.add_argument("--checkpoint", type=Path, help="a checkpoint written by train (default: the course model)")
    add_data_dir(gen)
    gen.add_argument(
        "--prompt", type=prompt, default=DEFAULT_PROMPT, help="text to continue (default: a scene heading)"
    )
    gen.add_argument("--max-new-tokens", type=whole_number(1), default=800)
    gen.add_argument("--temperature", type=temperature, default=0.8, help="0 is greedy; higher is more varied")
    gen.add_argument("--top-k", type=whole_number(1), help="sample only from the k most likely characters")
    gen.add_argument(
        "--top-p", type=probability_mass, help="sample only from the smallest set holding this much probability"
    )
    gen.add_argument("--seed", type=seed, default=1337, help=f"0 to {MAX_SEED}; the same seed writes the same scene")
    gen.set_defaults(run=cmd_generate, on_interrupt="interrupted: the scene so far is printed above")
    parser.set_defaults(run=cmd_main_job, seed=1337, on_interrupt=resume_hint)
    for command in (down, corpus, train):
        command.set_defaults(on_interrupt=resume_hint)
    return parser


def run_guarded(command: Callable[[], int], on_interrupt: str) -> int:
    """Run ``command`` and turn the problems a user can fix into one line on stderr and an exit status."""
    try:
        return command()
    except (UsageError, DamagedFileError, FileInUseError) as error:  # a file given that is no checkpoint, or busy
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (DownloadError, OSError, ValueError) as error:  # OSError: FileWriteError, FileNotFoundError...
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Interrupted as interrupted:
        print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"\n{on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run_guarded(lambda: args.run(args), args.on_interrupt)


if __name__ == "__main__":
    sys.exit(main())
