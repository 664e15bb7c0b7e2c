"""Helpers shared by the command-line tools: one-line errors with exit codes,
``--json`` output and plain-text tables."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Callable, Sequence

from .errors import FencevolError


def run_main(prog: str, main: Callable[[], int | None]) -> None:
    """Run ``main``; turn domain errors into ``prog: error: message`` and an exit
    code, Ctrl-C into 130. Never prints a traceback for a user error."""
    try:
        try:
            code = main()
        except BaseExceptionGroup as group:
            raise single_leaf(group) from None
    except FencevolError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code or 0)


def single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def setup_logging(prog: str, level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {prog}[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr)


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
