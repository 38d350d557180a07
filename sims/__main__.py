"""The command line: `python -m sims [list | run NAME [--param value ...] | animate RUN_DIR | plot RUN_DIR]`."""

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
  animate RUN_DIR [options]    re-render the animation of a saved run (no recomputing)
  plot RUN_DIR [options]       redraw the figures of a saved run (figure.png, final_state.png)

run options:
  --out DIR      run directory (default: runs/NAME-TIMESTAMP)
  --overwrite    replace DIR if it exists
  --gif          write the animation as GIF instead of MP4
  --no-animation skip the animation

animate options:
  --gif              write animation.gif instead of animation.mp4
  --out FILE         where to write (.mp4 or .gif; default RUN_DIR/animation.mp4)
  --fps N            frames per second (default 20)
  --duration S       total length in seconds (overrides --fps)
  --dpi N            dots per inch (default 100)
  --resolution WxH   frame size in pixels, e.g. 1280x720
  --trail N          fading trails N frames long
  --every K          render every K-th saved time
  --view ELEV,AZIM   camera of 3D views in degrees (default 20,-60)
  --quiet            no progress bar

animate and plot options:
  --series A,B       metric series of metrics.json to draw (default: the first 3)
  --cluster-tol X    colour tokens by tracked cluster at this distance (default: the
                     run's cluster_tol, if its config has one)
  --no-clusters      one colour for all tokens
  --dpi N            (plot) dots per inch of the figures (default 110)
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


_REPLAY_VALUES = {
    "--out": str,
    "--fps": float,
    "--duration": float,
    "--dpi": int,
    "--resolution": str,
    "--trail": int,
    "--every": int,
    "--view": str,
    "--series": str,
    "--cluster-tol": float,
}
_REPLAY_FLAGS = {"--gif", "--no-clusters", "--quiet"}
_PLOT_OPTIONS = {"--dpi", "--series", "--cluster-tol", "--no-clusters"}


def _parse_replay(command: str, args: list[str]) -> tuple[str, dict]:
    """RUN_DIR and the `--option value` pairs of `animate` or `plot`, each checked."""
    directory, options = None, {}
    it = iter(args)
    for arg in it:
        flag, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not arg.startswith("-"):
            if directory is not None:
                raise UsageError(f"{command} takes one RUN_DIR; got {directory!r} and {arg!r}")
            directory = arg
            continue
        allowed = _PLOT_OPTIONS if command == "plot" else set(_REPLAY_VALUES) | _REPLAY_FLAGS
        if flag not in allowed:
            raise UsageError(f"unknown option {flag} for {command} (see `python -m sims --help`)")
        if flag in _REPLAY_FLAGS:
            options[flag] = True
            continue
        value = inline or next(it, None)
        if value is None:
            raise UsageError(f"{flag} needs a value")
        try:
            options[flag] = _REPLAY_VALUES[flag](value)
        except ValueError:
            raise UsageError(
                f"{flag}: expected {_REPLAY_VALUES[flag].__name__}, got {value!r}"
            ) from None
        number = options[flag]
        if flag in ("--fps", "--duration", "--dpi", "--every", "--cluster-tol") and not number > 0:
            raise UsageError(f"{flag} must be > 0; got {value}")
        if flag == "--trail" and number < 0:
            raise UsageError(f"--trail must be >= 0; got {value}")
    if directory is None:
        raise UsageError(f"{command} needs a run directory: python -m sims {command} RUN_DIR")
    return directory, options


def _pair(flag: str, text: str, sep: str, kind=int) -> tuple:
    parts = text.split(sep)
    try:
        pair = tuple(kind(p) for p in parts)
    except ValueError:
        pair = ()
    if len(pair) != 2:
        example = "1280x720" if sep == "x" else "20,-60"
        raise UsageError(f"{flag}: expected two numbers like {example}; got {text!r}")
    return pair


def replay_command(command: str, args: list[str]) -> list[Path]:
    """`animate RUN_DIR` / `plot RUN_DIR`: redraw from the saved files, never recomputing."""
    from sims import _replay

    directory, opts = _parse_replay(command, args)
    try:
        run = _replay.load(directory)
        tol = None if opts.get("--no-clusters") else opts.get("--cluster-tol", run.cluster_tol)
        series = opts["--series"].split(",") if "--series" in opts else None
        if command == "plot":
            written = _replay.draw_figures(
                run, series=series, cluster_tol=tol, dpi=opts.get("--dpi", 110)
            )
        else:
            options = {"fps": opts.get("--fps", 20), "dpi": opts.get("--dpi", 100)}
            if "--duration" in opts:
                options["duration"] = opts["--duration"]
            if "--resolution" in opts:
                options["resolution"] = _pair("--resolution", opts["--resolution"], "x")
            if "--view" in opts:
                options["view"] = _pair("--view", opts["--view"], ",", float)
            if "--every" in opts:
                options["frames"] = range(0, len(run.ts), opts["--every"])
            out = Path(opts["--out"]) if "--out" in opts else None
            if out is not None and out.suffix not in (".mp4", ".gif"):
                raise UsageError(f"--out must end in .mp4 or .gif; got {out.name}")
            written = [
                _replay.draw_animation(
                    run,
                    out,
                    gif=opts.get("--gif", False),
                    series=series,
                    cluster_tol=tol,
                    trail=opts.get("--trail", 0),
                    progress=not opts.get("--quiet", False),
                    **options,
                )
            ]
    except _replay.ReplayError as e:
        raise UsageError(str(e)) from None
    for path in written:
        print(f"wrote {path}  ({path.stat().st_size / 1024:.1f} KiB)")
    return written


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

            for exp in sims.experiments().values():
                print(f"{exp.name:<22} {exp.summary}")
        elif argv[0] == "run":
            if len(argv) < 2 or argv[1].startswith("-"):
                raise UsageError("run needs an experiment name (see `python -m sims list`)")
            run_command(argv[1], argv[2:])
        elif argv[0] in ("animate", "plot"):
            replay_command(argv[0], argv[1:])
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
