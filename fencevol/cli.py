"""Helpers shared by the command-line tools: one-line errors with exit codes,
``--json`` output and plain-text tables."""

from __future__ import annotations

import json
import logging
import os
import re
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


LOG_CONTEXT: list[Callable[[], dict]] = []
"""Providers of fields every JSON log line carries (a node: its id, incarnation and
membership generation)."""

_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def event_name(record: logging.LogRecord) -> str:
    """A stable name for what a line reports: its logger and the first words of its
    message template (the same for every line the statement writes)."""
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    words = re.sub(r"%[-#0 +]*[\d.]*[sdrfgx]", " ", template.lower())
    words = re.findall(r"[a-z]+", words)[:5]
    return f"{record.name}." + "_".join(words)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, program, pid, logger, event, message;
    the context providers' fields; ``volume`` from ``extra`` or a DG/VOL first
    argument; the traceback if any."""

    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
               "level": record.levelname.lower(), "prog": self.prog, "pid": record.process,
               "logger": record.name, "event": getattr(record, "event", None) or event_name(record),
               "message": record.getMessage()}
        for provide in LOG_CONTEXT:
            try:
                out.update(provide())
            except Exception:           # a log line must never fail
                pass
        volume = getattr(record, "volume", None)
        if volume is None and isinstance(record.args, tuple) and record.args \
                and isinstance(record.args[0], str) and _VOLUME.match(record.args[0]):
            volume = record.args[0]
        if volume:
            out["volume"] = volume
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def setup_logging(prog: str, level: str = "info", fmt: str = "text") -> None:
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(prog))
        logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
        return
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
