"""The node's configuration file (``vclient run --config FILE``): TOML, every key
checked (an unknown key, a wrong type or a bad value is a one-line error naming
it). ``apply`` fills in what the command line left out: flags override the file.
docs/OPERATIONS.md has a full example."""

from __future__ import annotations

import argparse
import tomllib
from typing import Any, Callable

from fencevol.errors import InvalidArgument


def _str(v, where):
    if not isinstance(v, str) or not v:
        raise InvalidArgument(f"{where} must be a non-empty string")
    return v


def _int(v, where):
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"{where} must be an integer")
    return v


def _num(v, where):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise InvalidArgument(f"{where} must be a number of seconds")
    return float(v)


def _bool(v, where):
    if not isinstance(v, bool):
        raise InvalidArgument(f"{where} must be true or false")
    return v


def _strs(v, where):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise InvalidArgument(f"{where} must be a list of strings")
    return v


def _choice(*choices):
    def check(v, where):
        if v not in choices:
            raise InvalidArgument(f"{where} must be one of {', '.join(choices)}")
        return v
    return check


def _via(parse: Callable[[str], Any], many: bool = False):
    """Check with the command line's own parser for the flag (``DG/VOL:MODE``,
    ``HOST:PORT`` ...), so a file and a flag accept exactly the same values."""
    def check(v, where):
        items = _strs(v, where) if many else [_str(v, where)]
        try:
            out = [parse(x) for x in items]
        except (argparse.ArgumentTypeError, InvalidArgument) as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
        return out if many else out[0]
    return check


def _table(v, where):
    if not isinstance(v, dict):
        raise InvalidArgument(f"{where} must be a table")
    return v


def schema(parsers: dict[str, Callable]) -> dict:
    """Key -> (argparse destination, check), by table. ``parsers``: the command
    line's value parsers (volume, address, peer, disk path)."""
    volume, address = parsers["volume"], parsers["address"]
    return {
        "": {
            "node_id": ("node_id", _int), "servers": ("server", _strs), "key_file": ("key_file", _str),
            "tls_ca": ("tls_ca", _str), "mount": ("mount", _str),
            "attach": ("attach", _via(volume, many=True)), "pause_timeout": ("pause_timeout", _num),
            "control": ("control", _str), "remote_disks": ("remote_disk", _strs),
            "max_tasks": ("max_tasks", _int),
            "log_level": ("log_level", _choice("debug", "info", "warning", "error")),
            "log_format": ("log_format", _choice("text", "json")), "metrics": ("metrics", _str),
        },
        "disk_paths": None,           # DISK = "PATH"
        "watchdog": {
            "enabled": ("watchdog", lambda v, w: "on" if _bool(v, w) else "off"),
            "slack": ("watchdog_slack", _num), "hardware": ("hw_watchdog", _str),
        },
        "cluster": {
            "id": ("cluster_id", _str), "coordinator": ("coordinator", _str),
            "heartbeat": ("heartbeat", _via(address, many=True)),
            "interval": ("hb_interval", _num), "timeout": ("hb_timeout", _num),
            "race_timeout": ("race_timeout", _num), "join_timeout": ("join_timeout", _num),
            "join": ("no_join", lambda v, w: not _bool(v, w)),
            "peers": None,            # ID = ["HOST:PORT", ...] (one address per link)
        },
    }


def load(path: str, parsers: dict[str, Callable]) -> dict[str, Any]:
    """The file's settings as argparse destinations -> values."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"config file {path} not found") from None
    except OSError as exc:
        raise InvalidArgument(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config file {path}: not valid TOML: {exc}") from None
    spec = schema(parsers)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in spec and spec[key] is not None and key != "":
            _section(path, key, _table(value, f"{path}: [{key}]"), spec[key], parsers, out)
        elif key == "disk_paths":
            table = _table(value, f"{path}: [disk_paths]")
            out["disk_path"] = [(disk, _str(p, f"{path}: disk_paths.{disk}")) for disk, p in table.items()]
        elif key in spec[""]:
            dest, check = spec[""][key]
            out[dest] = check(value, f"{path}: {key}")
        else:
            raise InvalidArgument(f"{path}: unknown key {key!r}")
    return out


def _section(path: str, name: str, table: dict, spec: dict, parsers: dict, out: dict) -> None:
    for key, value in table.items():
        where = f"{path}: {name}.{key}"
        if name == "cluster" and key == "peers":
            peers = []
            for node, addrs in _table(value, where).items():
                text = f"{node}=" + ",".join(_strs(addrs, f"{where}.{node}"))
                peers.append(_via(parsers["peer"])(text, f"{where}.{node}"))
            out["peer"] = peers
        elif key in spec and spec[key] is not None:
            dest, check = spec[key]
            out[dest] = check(value, where)
        else:
            raise InvalidArgument(f"{path}: unknown key {name}.{key!r}")


def apply(args: argparse.Namespace, settings: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Fill every option the command line did not give (``None``) from the file,
    else from ``defaults``."""
    for dest, default in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, settings.get(dest, default))
    for dest, value in settings.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
