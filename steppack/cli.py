"""The `steppack` command: one entry point, subcommands imported only when used.

Each subcommand module has `add_arguments(parser)` and `main(args) -> int`. `steppack shards …`
never imports torch or Beam, so inspecting an output is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from steppack.shards.errors import SteppackError

# name -> (module, one-line help). Modules are imported only for the subcommand that runs.
COMMANDS = {
    "prepare": ("steppack.pipeline.cli", "Run the Beam job: corpus files -> tokenized, shuffled, packed step shards."),
    "shards": ("steppack.shards.cli", "Inspect and verify a prepared output: ls, stats, show, verify."),
    "train": ("steppack.trainer.cli", "Train a DeepSeek-style decoder, reading step s from shard s (torchrun for several ranks)."),
    "export": ("steppack.trainer.hf", "Write a training checkpoint as a Hugging Face Llama model directory."),
    "plot": ("steppack.trainer.plot", "Draw a training run's metrics JSONL: loss, learning rate, grad norm, tokens/s, data wait."),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steppack",
        description="Pack a math corpus into one Arrow shard per global training step, inspect it, train on it.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen subcommand's module is imported; the others get a help line alone.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
    return parser


# An optional dependency a subcommand imports when it runs: the extra that installs it.
EXTRAS = {"torch": "train", "matplotlib": "plot"}


class _Version(argparse.Action):
    """--version, looked up only when asked (it imports the manifest module: numpy, pyarrow)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from steppack.shards.manifest import tool_version

        print(f"steppack {tool_version()}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    return _main(argv)[0]


def _main(argv: list[str] | None) -> tuple[int, argparse.Namespace | None]:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "_accepts_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown = unknown
    try:
        return int(args._main(args) or 0), args
    except SteppackError as exc:
        print(f"steppack {args.command}: error: {exc}", file=sys.stderr)
        return 2, args
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]  # "matplotlib.figure" -> "matplotlib"
        if package not in EXTRAS:
            raise
        print(f"steppack {args.command}: error: this needs {package}, which is not installed: "
              f"pip install 'steppack[{EXTRAS[package]}]'", file=sys.stderr)
        return 2, args
    except KeyboardInterrupt:
        print(f"steppack {args.command}: interrupted", file=sys.stderr)
        return 130, args
    except BrokenPipeError:  # `steppack shards ls OUT | head`
        return 0, args


def entry() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
