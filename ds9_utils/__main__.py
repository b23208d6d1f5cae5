"""Command line: ``python -m ds9_utils [download|corpus|train|generate]``.

Without a command it runs the whole job: download the transcripts (when they are not cached), build the
corpus, train the model that suits this machine (resuming an interrupted run, reusing a finished one) and
print a new scene.

A thin layer over the library: parse arguments, call one function, print a short summary whose last line
is one JSON object (so scripts and tests can read it), and turn known problems into one clear line on
stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .download import DownloadConfig, DownloadError, download_transcripts
from .settings import download_delay

DEFAULT_PROMPT = "[Quark's]\n"
SCENE_END = "\n\n"  # scenes are one blank line apart


def _print_json(summary: dict) -> None:
    print(json.dumps(summary))


def cmd_download(args: argparse.Namespace) -> int:
    delay = download_delay() if args.delay is None else args.delay
    report = download_transcripts(args.base_url, args.data_dir, DownloadConfig(delay=delay), progress=True)
    print(
        f"downloaded {len(report.downloaded)} pages, {len(report.cached)} already cached, "
        f"{len(report.failed)} failed, in {report.seconds:.1f} s"
    )
    for failure in report.failed:
        print(f"  failed: {failure['page']}: {failure['reason']}")
    _print_json(report.to_dict())
    return 1 if report.failed and not (report.downloaded or report.cached) else 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from .corpus import build_corpus
    from .download import pages_dir

    data = args.data_dir
    summary = build_corpus(pages_dir(data), (data / "corpus") if data else None)
    info = summary.to_dict()
    print(f"episodes: {info['episodes']}, characters: {info['characters']:,}, vocabulary: {info['vocab_size']}")
    print("top speakers: " + ", ".join(f"{name} ({count})" for name, count in info["top_speakers"][:10]))
    _print_json(info)
    return 0


def _training_data(text_file: Path | None):
    """The DS9 corpus (downloaded and built when missing), or any UTF-8 text file split 90/10."""
    from .course import load_course_data, text_file_data
    from .workspace import ensure_corpus

    return load_course_data(ensure_corpus()) if text_file is None else text_file_data(text_file)


def _default_checkpoint(text_file: Path | None) -> Path:
    from .course import checkpoints_dir, course_checkpoint_path

    return course_checkpoint_path() if text_file is None else checkpoints_dir() / f"{text_file.stem}.pt"


def cmd_train(args: argparse.Namespace) -> int:
    from .course import train_course_model

    out = args.out or _default_checkpoint(args.text)
    if out.exists() and not args.resume:
        raise FileExistsError(
            f"{out} already exists: pass --resume to continue that run, or --out NEW.pt to start another"
        )
    data = _training_data(args.text)
    model, result = train_course_model(
        data,
        preset=args.preset,
        checkpoint_path=out,
        resume=args.resume,
        max_steps=args.max_steps,
        max_seconds=args.max_seconds,
    )
    print(
        f"validation loss {result.val_loss:.4f} nats = {result.val_bpc:.4f} bits per character after "
        f"{result.steps} steps ({result.stop_reason}); checkpoint: {out}"
    )
    _print_json(
        {
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
) -> str:
    import torch

    from .generate import generate_text, stop_at_text
    from .train import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    if loaded.tokenizer is None:
        raise ValueError(f"{checkpoint} holds no tokenizer, so its tokens cannot be turned into text")
    device = next(loaded.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    return generate_text(
        loaded.model,
        loaded.tokenizer,
        prompt,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        stop=stop_at_text(loaded.tokenizer, SCENE_END),
    )


def cmd_generate(args: argparse.Namespace) -> int:
    print(
        _write_scene(
            args.checkpoint, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed
        )
    )
    return 0


def cmd_main_job(args: argparse.Namespace) -> int:
    from .course import course_checkpoint_path, train_course_model
    from .settings import choose_device
    from .train import default_preset

    device = choose_device()
    preset = default_preset(device)
    print(f"DS9 - Let's Build an LLM: the '{preset}' model on {device}. Step 1: the transcripts and the corpus.")
    data = _training_data(None)
    print(f"Step 2: training ({data}); an interrupted run resumes where it stopped.")
    _, result = train_course_model(data, preset=preset, device=device)
    print(
        f"validation loss {result.val_loss:.3f} nats = {result.val_bpc:.3f} bits per character "
        f"after {result.steps} steps. Step 3: a new scene.\n"
    )
    print(_write_scene(course_checkpoint_path(), DEFAULT_PROMPT, 800, 0.8, None, None, args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ds9_utils", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")

    down = commands.add_parser("download", help="download the transcripts into the cache")
    down.add_argument("--base-url", help="site root (default $DS9_BASE_URL or http://www.chakoteya.net/)")
    down.add_argument("--data-dir", type=Path, help="cache folder (default $DS9_DATA_DIR or data/)")
    down.add_argument("--delay", type=float, help="seconds between requests (default 1)")
    down.set_defaults(run=cmd_download)

    corpus = commands.add_parser("corpus", help="parse the cached pages into the training corpus and its split")
    corpus.add_argument("--data-dir", type=Path, help="cache folder (default $DS9_DATA_DIR or data/)")
    corpus.set_defaults(run=cmd_corpus)

    train = commands.add_parser("train", help="train a GPT on the DS9 corpus (or any text) and checkpoint it")
    train.add_argument(
        "--preset",
        help="model and recipe: quick, small, cpu or gpu (default: quick in quick mode, gpu on CUDA, otherwise cpu)",
    )
    train.add_argument("--text", type=Path, help="train on this UTF-8 file, split 90/10, instead of DS9")
    train.add_argument("--max-steps", type=int, help="stop after this many steps (default: the preset's)")
    train.add_argument("--max-seconds", type=float, help="stop after this many seconds of training")
    train.add_argument("--out", type=Path, help="checkpoint file (default data/checkpoints/course_model.pt)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.set_defaults(run=cmd_train)

    gen = commands.add_parser("generate", help="write a scene with a trained model")
    gen.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by train")
    gen.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to continue (default: a scene heading)")
    gen.add_argument("--max-new-tokens", type=int, default=800)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 is greedy; higher is more varied")
    gen.add_argument("--top-k", type=int, help="sample only from the k most likely characters")
    gen.add_argument("--top-p", type=float, help="sample only from the smallest set holding this much probability")
    gen.add_argument("--seed", type=int, default=1337)
    gen.set_defaults(run=cmd_generate)
    parser.set_defaults(run=cmd_main_job, seed=1337)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None) is not None:
        args.data_dir = args.data_dir.expanduser().resolve()
    try:
        return args.run(args)
    except (DownloadError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: everything written so far is complete; run the same command again to resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
