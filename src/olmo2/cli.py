"""The ``olmo2`` command line: builds a parser from the command table (``olmo2.commands``) and calls each
command's library function with the parsed arguments as keywords. Only this module sees argparse."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from safetensors import SafetensorError

from olmo2 import __version__
from olmo2.assets import AssetError
from olmo2.commands import COMMANDS, GROUPS, HALTED, Command
from olmo2.config import to_dict

DESCRIPTION = "The OLMo 2 recipe: tokenize, pretrain, anneal, soup, evaluate, post-train (SFT, DPO, RLVR)."
EXIT_OK, EXIT_BUG, EXIT_HALTED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 3, 4, 130  # 2: usage (argparse)
EPILOG = (
    "exit status: 0 ok; 1 internal error (a bug: the traceback is shown); 2 usage; 3 run halted; "
    "4 bad input (config, missing or corrupt file, I/O or permission error, unavailable device), "
    "reported in one line; 130 interrupted. OLMO2_DEBUG=1 shows the traceback of every error."
)
# The user's input or machine, not a bug: configs, files (missing, corrupt, unwritable), devices.
BAD_INPUT = (ValueError, OSError, AssetError, SafetensorError)


def resolve(target: str) -> Any:
    """``"module:name"`` -> that object. The table names library functions so and imports one only
    when its command runs or shows its help: ``olmo2 --help`` and the light commands load no torch."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _library_parser(target: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return resolve(target)(text)
        except ValueError as e:  # argparse shows the message of this kind only
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


class CommandParser(argparse.ArgumentParser):
    """Reads its description from the library function's docstring when the help is shown."""

    target: str | None = None

    def format_help(self) -> str:
        if self.description is None and self.target:
            doc = (resolve(self.target).__doc__ or "").split("\n\n")[0]
            self.description = " ".join(doc.replace("``", "").split())
        return super().format_help()


class PrintAndExit(argparse.Action):
    """A flag like ``--version``: print what the library function ``target`` returns, then exit."""

    def __init__(self, option_strings, dest, target: str, help: str | None = None):
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, help=help)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None):
        print(resolve(self.target)())
        parser.exit()


def _parser_options(options: dict) -> dict:
    """``add_argument`` options of a table entry, with library parsers and actions resolved."""
    options = dict(options)
    if isinstance(options.get("type"), str):
        options["type"] = _library_parser(options["type"])
    if options.get("action") == "print_and_exit":
        options["action"] = PrintAndExit
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="olmo2", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"olmo2 {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, cmd in COMMANDS.items():
        group, _, action = name.partition(" ")
        if action and group not in groups:
            group_parser = commands.add_parser(group, help=GROUPS[group])
            groups[group] = group_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        p = (groups[group] if action else commands).add_parser(
            action or name, help=cmd.help, description=cmd.description
        )
        p.target = cmd.run
        if cmd.config:
            p.add_argument("config", help=cmd.config[1])
            p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
            p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config")
        exclusive = p.add_mutually_exclusive_group(required=True) if cmd.one_of else None
        for flags, options in cmd.one_of:
            exclusive.add_argument(*flags, **_parser_options(options))
        for flags, options in cmd.args:
            p.add_argument(*flags, **_parser_options(options))
        p.set_defaults(spec=cmd, **(cmd.defaults or {}))
    return parser


def run(cmd: Command, options: dict) -> None:
    """Load the config (check it and print it, for --dry-run) or not; call the library function; print
    its text."""
    if cmd.config:
        cfg = resolve(cmd.config[0])(options.pop("config"), options.pop("overrides"))
        if options.pop("dry_run"):
            if cmd.check:
                resolve(cmd.check)(cfg)
            print(json.dumps(to_dict(cfg), indent=2))
            return
        result = resolve(cmd.run)(cfg, **options)
    else:
        result = resolve(cmd.run)(**options)
    text = cmd.show(result) if cmd.show else None
    if text is not None:
        print(text)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:  # not "[Errno 13] ...: 'path'"
        return f"{e.filename}: {e.strerror}"
    return str(e)


def exit_status(e: Exception) -> int:
    """The documented status of an error (``EPILOG``); ``EXIT_BUG`` for anything unexpected."""
    if isinstance(e, RuntimeError) and not isinstance(e, AssetError) and isinstance(e, resolve(HALTED)):
        return EXIT_HALTED  # TrainingHalted's module (torch) is imported only now
    return EXIT_BAD_INPUT if isinstance(e, BAD_INPUT) else EXIT_BUG


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status (``EPILOG``). A bug keeps its traceback."""
    options = vars(build_parser().parse_args(argv))  # usage errors: argparse exits with 2
    for name in ("command", "action"):  # the names; `spec` is the command
        options.pop(name, None)
    debug = bool(os.environ.get("OLMO2_DEBUG"))
    try:
        run(options.pop("spec"), options)
    except KeyboardInterrupt:
        if debug:
            raise
        print("olmo2: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        status = exit_status(e)
        if status == EXIT_BUG or debug:
            raise
        label = "training halted" if status == EXIT_HALTED else "error"
        print(f"olmo2: {label}: {_message(e)}", file=sys.stderr)
        return status
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
