"""The command line: `python -m sims [list | run NAME [--param value ...]]`."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

USAGE = """\
usage: python -m sims [COMMAND] ...

Simulate self-attention as an interacting particle system.

commands:
  (none)                       run the default experiment ({default})
  list                         list the experiments
  run NAME [options] [params]  run experiment NAME; `run NAME --help` lists its params

run options:
  --out DIR      run directory (default: runs/NAME-TIMESTAMP)
  --overwrite    replace DIR if it exists
  --gif          write the animation as GIF instead of MP4
  --no-animation skip the animation
"""

_RUN_FLAGS = {"--overwrite": "overwrite", "--gif": "gif", "--no-animation": "no_animation"}


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _split_run_options(args: list[str]) -> tuple[dict, list[str]]:
    options = {"out": None, "overwrite": False, "gif": False, "no_animation": False}
    rest = []
    it = iter(args)
    for arg in it:
        if arg in _RUN_FLAGS:
            options[_RUN_FLAGS[arg]] = True
        elif arg == "--out" or arg.startswith("--out="):
            value = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if not value:
                raise UsageError("--out needs a directory")
            options["out"] = Path(value)
        else:
            rest.append(arg)
    return options, rest


def _one_line(text: str) -> str:
    """tyro formats errors as boxes of sections (title, message, help); keep the message,
    joined onto one line."""
    sections, current = [], []
    for line in text.splitlines():
        line = line.strip(" │┃╭╮╰╯")
        if line and not set(line) - set("-─ "):  # a rule between sections
            sections.append(current)
            current = []
        elif line:
            current.append(line.strip())
    sections = [sec for sec in [*sections, current] if sec]
    body = sections[1] if len(sections) > 1 else (sections[0] if sections else [])
    message = " ".join(body) or "invalid arguments"
    # "Error parsing --n: ..." names the flag; "Error parsing Config: ..." is a config check
    found = re.match(r"Error parsing (\S+): (.*)", message)
    if found:
        flag, rest = found.groups()
        message = f"{flag}: {rest}" if flag.startswith("-") else rest
    return message


def parse_config(name: str, args: list[str]):
    """Build experiment `name`'s config from `--param value` arguments with tyro."""
    import tyro

    import sims

    try:
        exp = sims.get(name)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            config, unknown = tyro.cli(
                exp.config, args=args, prog=f"python -m sims run {name}", return_unknown_args=True
            )
    except SystemExit as e:
        if e.code == 0:  # --help
            print(buf.getvalue().rstrip())
            print("\nrun options: --out DIR, --overwrite, --gif, --no-animation")
            raise
        raise UsageError(_one_line(buf.getvalue())) from None
    except ValueError as e:  # a config's own checks, from __post_init__
        raise UsageError(str(e)) from None
    if unknown:
        raise UsageError(f"unknown parameter {unknown[0]} for experiment {name!r} (see --help)")
    return config


def run_command(name: str, args: list[str]) -> Path:
    import sims

    options, rest = _split_run_options(args)
    config = parse_config(name, rest)
    try:
        out = sims.run(
            config,
            options["out"],
            overwrite=options["overwrite"],
            gif=options["gif"],
            animation=not options["no_animation"],
        )
    except sims.RunError as e:
        raise UsageError(str(e)) from None
    print(f"\nrun directory: {out}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name:<20} {path.stat().st_size / 1024:>9.1f} KiB")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from sims._registry import DEFAULT

    try:
        if argv and argv[0] in ("-h", "--help", "help"):
            print(USAGE.format(default=DEFAULT))
            return 0
        if not argv or argv[0].startswith("--"):
            run_command(DEFAULT, argv)
        elif argv[0] == "list":
            import sims

            for exp in sims.list_experiments().values():
                print(f"{exp.name:<22} {exp.summary}")
        elif argv[0] == "run":
            if len(argv) < 2 or argv[1].startswith("-"):
                raise UsageError("run needs an experiment name (see `python -m sims list`)")
            run_command(argv[1], argv[2:])
        else:
            raise UsageError(f"unknown command {argv[0]!r} (see `python -m sims --help`)")
    except UsageError as e:
        print(f"sims: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("sims: interrupted; no run directory was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
