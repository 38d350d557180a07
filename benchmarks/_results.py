"""What every benchmark script writes beside its numbers: the commit measured, and its
tables as JSON and Markdown under `benchmarks/results/`, written atomically."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path


def commit() -> str:
    """The short hash of the checkout's HEAD (`unknown` outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_atomic(path: Path, text: str) -> None:
    """A reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(out: Path, res: dict, table: str) -> None:
    """Print `table` and write `res` (with it) to `out` (JSON) and `out` as `.md`."""
    res["table"] = table
    print(table)
    write_atomic(out, json.dumps(res, indent=1))
    write_atomic(out.with_suffix(".md"), table + "\n")


def header(machine: str, **more) -> dict:
    """The record every result starts with: when, which commit, which machine, the load."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "commit": commit(),
        "machine": machine,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **more,
        "loadavg_start": os.getloadavg(),
    }
