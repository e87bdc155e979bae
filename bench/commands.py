"""The contract of a ``pricebench`` sub-command registered by a plugin.

See :func:`bench.hookspecs.register_commands`. A command parses its own
options and returns an exit code: 0 success, 1 a run-time failure, 2 bad
input (say what and where, write nothing).
"""

from __future__ import annotations

import argparse
from typing import Any, ClassVar


def count_arg(minimum: int):
    """An argparse ``type`` for an integer >= ``minimum`` with a one-line error otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


class Command:
    """A sub-command: ``pricebench <name> ...``."""

    kind: ClassVar[str] = "command"
    name: ClassVar[str] = ""  # as typed on the command line; letters, digits, '-' and '_'
    version: ClassVar[str] = "1"
    help: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's options to its sub-parser."""

    def run(self, args: argparse.Namespace, out: Any, err: Any) -> int:  # pragma: no cover - contract
        """Do the work; ``out`` and ``err`` are rich consoles. Returns the exit code."""
        raise NotImplementedError
