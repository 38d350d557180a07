"""The command line: `python -m sims [list | run NAME [options] [params] | animate RUN_DIR |
plot RUN_DIR]` (also installed as `particles-sims`).

Sub-commands are argparse parsers; an experiment's parameters are its config's fields,
parsed by tyro. Every error in the input is one line on stderr, `sims: error: ...`, with
exit status 2, before any computation. Ctrl-C exits with 130, SIGTERM with 143 and SIGHUP
with 129, leaving no partial run behind.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import re
import shlex
import signal
import sys
import warnings
from pathlib import Path

# JAX probes for a TPU on start-up and warns from a timer thread when that takes long (a
# loaded machine): on stderr that is a second line after a one-line error, and no TPU is
# ever asked for here.
warnings.filterwarnings("ignore", message="TPU backend initialization is taking more than")

COMMANDS = ("list", "run", "animate", "plot")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _prog() -> str:
    """How the program was started, as a user would type it again."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "particles-sims" if name == "particles-sims" else "python -m sims"


def solver_names() -> list[str]:
    """Every ODE solver an experiment's `--solver` takes: the names of `sims._options`,
    the one registry where option names become library objects."""
    from sims._options import SOLVERS

    return list(SOLVERS)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as one-line `UsageError`s."""

    def error(self, message: str):
        found = re.match(r"argument ([^:]+): (.*)", message)
        if found:
            flag, rest = found.groups()
            flag = flag.split("/")[-1]
            raise UsageError(f"{flag}: {rest}")
        found = re.match(r"unrecognized arguments: (\S+)", message)
        if found:
            raise UsageError(f"unknown option {found.group(1)} (see `{self.prog} --help`)")
        found = re.match(r"the following arguments are required: (.*)", message)
        if found:
            raise UsageError(f"missing {found.group(1)} (see `{self.prog} --help`)")
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def _pair(sep: str, kind, example: str):
    def parse(text: str) -> tuple:
        try:
            pair = tuple(kind(p) for p in text.split(sep))
        except ValueError:
            pair = ()
        if len(pair) != 2:
            raise argparse.ArgumentTypeError(f"expected two numbers like {example}; got {text!r}")
        return pair

    return parse


def _devices(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive int or 'all', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or 'all'; got {text}")
    return value


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default: runs/NAME-TIMESTAMP)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it is a complete run of this program (never anything else)",
    )
    parser.add_argument("--gif", action="store_true", help="write the animation as GIF, not MP4")
    parser.add_argument("--no-animation", action="store_true", help="skip the animation")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes that finish in under 30 s on 2 CPU cores (other flags still apply)",
    )
    parser.add_argument(
        "--devices",
        type=_devices,
        metavar="N|all",
        help="split ensembles and large clouds over N devices (default: all JAX sees)",
    )
    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="join a multi-process run whose process 0 listens here (SLURM's srun is "
        "detected without it)",
    )
    parser.add_argument(
        "--num-processes", type=_positive(int), metavar="N", help="processes of the run"
    )
    parser.add_argument(
        "--process-id", type=_nonnegative_int, metavar="I", help="this process's index"
    )


def _add_replay_options(parser: argparse.ArgumentParser, dpi: int) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `run`")
    parser.add_argument(
        "--series",
        metavar="A,B",
        help="metric series of metrics.json to draw (default: the first 3)",
    )
    parser.add_argument(
        "--cluster-tol",
        type=_positive(float),
        metavar="X",
        help="colour tokens by tracked cluster at this distance (default: the run's "
        "cluster_tol, if its config has one)",
    )
    parser.add_argument("--no-clusters", action="store_true", help="one colour for all tokens")
    parser.add_argument("--dpi", type=_positive(int), help=f"dots per inch (default: {dpi})")


def build_parser() -> argparse.ArgumentParser:
    import particles
    from sims._registry import DEFAULT, list_experiments

    prog = _prog()
    names = ", ".join(list_experiments())
    parser = _Parser(
        prog=prog,
        description="Simulate self-attention as an interacting particle system.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog=(
            f"With no command (or only options), runs the default experiment, {DEFAULT}.\n"
            f"experiments: {names}\n"
            f"solvers (--solver of the experiments that take one): {', '.join(solver_names())}\n"
            f"`{prog} COMMAND --help` and `{prog} run NAME --help` tell more."
        ),
    )
    parser.add_argument("--version", action="version", version=f"particles {particles.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.add_parser("list", help="list the experiments, each with its summary")
    run = commands.add_parser(
        "run",
        help="run experiment NAME; `run NAME --help` lists its parameters",
        description="Run an experiment into a run directory (config.json, trajectory.npz,\n"
        "metrics.json, figures, animation) and print a summary of its results.",
        epilog=f"experiments: {names}\nsolvers: {', '.join(solver_names())}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    run.add_argument("name", nargs="?", metavar="NAME", help="the experiment (see `list`)")
    _add_run_options(run)
    run.add_argument(
        "params",
        nargs=argparse.REMAINDER,
        metavar="PARAMS",
        help="the experiment's parameters, `--param value` (see `run NAME --help`)",
    )
    animate = commands.add_parser(
        "animate",
        help="re-render the animation of a saved run (no recomputing)",
        description="Re-render the animation of a saved run from its files.",
        allow_abbrev=False,
    )
    _add_replay_options(animate, dpi=100)
    animate.add_argument(
        "--gif", action="store_true", help="write animation.gif instead of animation.mp4"
    )
    animate.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="where to write (.mp4 or .gif; default RUN_DIR/animation.mp4)",
    )
    animate.add_argument(
        "--fps", type=_positive(float), help="frames per second (default: 20, or the run's)"
    )
    animate.add_argument(
        "--duration", type=_positive(float), metavar="S", help="total seconds (overrides --fps)"
    )
    animate.add_argument(
        "--resolution",
        type=_pair("x", int, "1280x720"),
        metavar="WxH",
        help="frame size in pixels, e.g. 1280x720",
    )
    animate.add_argument(
        "--trail", type=_nonnegative_int, default=0, metavar="N", help="fading trails N long"
    )
    animate.add_argument(
        "--every", type=_positive(int), metavar="K", help="render every K-th saved time"
    )
    animate.add_argument(
        "--view",
        type=_pair(",", float, "20,-60"),
        metavar="ELEV,AZIM",
        help="camera of 3D views in degrees (default: 20,-60)",
    )
    animate.add_argument("--quiet", action="store_true", help="no progress bar")
    plot = commands.add_parser(
        "plot",
        help="redraw the figures of a saved run (figure.png, final_state.png)",
        description="Redraw the figures of a saved run from its files.",
        allow_abbrev=False,
    )
    _add_replay_options(plot, dpi=110)
    return parser


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


def _experiment(name: str):
    import sims

    try:
        return sims.get(name)
    except KeyError as e:
        raise UsageError(e.args[0]) from None


def parse_config(name: str, args: list[str], quick: bool = False):
    """Build experiment `name`'s config from `--param value` arguments with tyro; with
    `quick`, the defaults are the `--quick` sizes."""
    import tyro

    exp = _experiment(name)
    buf = io.StringIO()
    prog = f"{_prog()} run {name}" + (" --quick" if quick else "")
    default = exp.quick() if quick else None
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            config, unknown = tyro.cli(
                exp.config, args=args, prog=prog, default=default, return_unknown_args=True
            )
    except SystemExit as e:
        if e.code == 0:  # --help
            print(buf.getvalue().rstrip())
            print(
                "\nrun options:\n"
                "  --out DIR       run directory (default: runs/NAME-TIMESTAMP)\n"
                "  --overwrite     replace DIR if it is a complete run of this program\n"
                "  --gif           write the animation as GIF instead of MP4\n"
                "  --no-animation  skip the animation\n"
                "  --quick         small sizes, under 30 s on 2 CPU cores (with --quick, --help\n"
                "                  shows the quick defaults)\n"
                "  --devices N|all split ensembles and large clouds over N devices (default: all)\n"
                "  --coordinator HOST:PORT --num-processes N --process-id I\n"
                "                  join a multi-process run (SLURM's srun needs none of these)"
            )
            if any("solver" in f.name for f in _fields(exp.config)):
                print(f"\nsolvers: {', '.join(solver_names())}")
            raise
        raise UsageError(_one_line(buf.getvalue())) from None
    except ValueError as e:  # a config's own checks, from __post_init__
        raise UsageError(str(e)) from None
    if unknown:
        raise UsageError(f"unknown parameter {unknown[0]} for experiment {name!r} (see --help)")
    return config


def _fields(config_type):
    import dataclasses

    return dataclasses.fields(config_type)


def run_command(name: str, args: list[str], options: argparse.Namespace, typed: str) -> Path:
    """`run NAME [options] [params]`: run, list the files, print the results' summary."""
    import sims
    from sims import _summary

    more = _Parser(prog=f"{_prog()} run {name}", add_help=False, allow_abbrev=False)
    _add_run_options(more)
    later, params = more.parse_known_args(args)
    for key, value in vars(later).items():
        if value not in (None, False):
            setattr(options, key, value)
    processes = _join(options)
    config = parse_config(name, params, quick=options.quick)
    try:
        out = sims.run(
            config,
            options.out,
            overwrite=options.overwrite,
            command=typed,
            devices=options.devices or "all",
            gif=options.gif,
            animation=not options.no_animation,
        )
    except sims.RunError as e:
        raise UsageError(str(e)) from None
    if processes > 1 and _process_index() != 0:
        return out  # process 0 wrote the run and reports it
    print(f"\nrun directory: {out}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name:<24} {path.stat().st_size / 1024:>9.1f} KiB")
    lines = _summary.summarize(_experiment(name), out)
    if lines:
        print(f"\n{name}: results (metrics.json)")
        for line in lines:
            print(f"  {line}")
    return out


def _join(options: argparse.Namespace) -> int:
    """Join a multi-process run (explicit coordinator, or SLURM's srun) before anything
    touches a device; return the process count."""
    from particles import devices

    try:
        return devices.initialize(
            options.coordinator,
            num_processes=options.num_processes,
            process_id=options.process_id,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    except RuntimeError as e:  # the coordinator cannot be reached, or times out
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot join the multi-process run: {first}") from None


def _process_index() -> int:
    from particles import devices

    return devices.process_index()


def replay_command(command: str, opts: argparse.Namespace) -> list[Path]:
    """`animate RUN_DIR` / `plot RUN_DIR`: redraw from the saved files, never recomputing."""
    from sims import _replay

    try:
        _replay.check_complete(opts.run_dir)
        exp = _replay.experiment_of(opts.run_dir)
        hook = None
        if exp is not None:
            hook = exp.draw_figures if command == "plot" else exp.draw_animations
        if hook is not None:
            written = _own_drawings(command, exp, hook, opts)
        else:
            written = _generic_drawings(command, opts)
    except _replay.ReplayError as e:
        raise UsageError(str(e)) from None
    except OSError as e:  # writing: a read-only directory, a full disk
        where = e.filename or opts.run_dir
        raise UsageError(f"{where}: cannot write ({e.strerror or e})") from None
    for path in written:
        print(f"wrote {path}  ({path.stat().st_size / 1024:.1f} KiB)")
    return written


def _own_drawings(command: str, exp, hook, opts: argparse.Namespace) -> list[Path]:
    """An experiment's own figures or animations, drawn by the functions it registered."""
    from sims import _replay

    directory = Path(opts.run_dir)
    given = {"dpi": opts.dpi}
    if command == "animate":
        if opts.out is not None or opts.series or opts.cluster_tol or opts.no_clusters:
            raise UsageError(
                f"{exp.name} draws its own animations: --out, --series and the cluster "
                "options apply to trajectory-only runs"
            )
        given.update(fps=opts.fps, duration=opts.duration, resolution=opts.resolution)
        given.update(view=opts.view, trail=opts.trail or None)
    elif opts.series or opts.cluster_tol or opts.no_clusters:
        raise UsageError(
            f"{exp.name} draws its own figures: --series and the cluster options apply to "
            "trajectory-only runs"
        )
    options = {k: v for k, v in given.items() if v is not None}
    try:
        if command == "plot":
            return hook(directory, **options)
        return hook(directory, gif=opts.gif, progress=not opts.quiet, **options)
    except (FileNotFoundError, ValueError, KeyError, IndexError, TypeError) as e:
        message = str(e).strip("'\"") or type(e).__name__
        raise _replay.ReplayError(f"{directory}: cannot redraw {exp.name} ({message})") from None


def _generic_drawings(command: str, opts: argparse.Namespace) -> list[Path]:
    """Figures and animation of a run that holds a trajectory (any experiment's, or one
    saved by `particles.io.save_run`)."""
    from sims import _replay

    run = _replay.load(opts.run_dir)
    tol = None if opts.no_clusters else (opts.cluster_tol or run.cluster_tol)
    series = opts.series.split(",") if opts.series else None
    if command == "plot":
        written = _replay.draw_figures(run, series=series, cluster_tol=tol, dpi=opts.dpi or 110)
    else:
        options = {"fps": opts.fps or 20, "dpi": opts.dpi or 100}
        if opts.duration is not None:
            options["duration"] = opts.duration
        if opts.resolution is not None:
            options["resolution"] = opts.resolution
        if opts.view is not None:
            options["view"] = opts.view
        if opts.every is not None:
            options["frames"] = range(0, len(run.ts), opts.every)
        out = opts.out
        if out is not None and out.suffix not in (".mp4", ".gif"):
            raise UsageError(f"--out must end in .mp4 or .gif; got {out.name}")
        written = [
            _replay.draw_animation(
                run,
                out,
                gif=opts.gif,
                series=series,
                cluster_tol=tol,
                trail=opts.trail,
                progress=not opts.quiet,
                **options,
            )
        ]
    return written


def _dispatch(argv: list[str]) -> None:
    from sims._registry import DEFAULT, list_experiments

    typed = " ".join([_prog(), shlex.join(argv)]).rstrip()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", DEFAULT, *argv]
    elif argv[0] == "help":
        argv = ["--help", *argv[1:]]
    elif not argv[0].startswith("-") and argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown command {argv[0]!r}{hint} (see `{_prog()} --help`)")
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        what = "option" if extra[0].startswith("-") else "argument"
        raise UsageError(f"unknown {what} {extra[0]} (see `{_prog()} {args.command} --help`)")
    if args.command == "list":
        for exp in list_experiments().values():
            print(f"{exp.name:<20} {exp.summary}")
    elif args.command == "run":
        if args.name is None:
            raise UsageError(f"run needs an experiment name (see `{_prog()} list`)")
        run_command(args.name, args.params, args, typed)
    else:
        replay_command(args.command, args)


def main(argv: list[str] | None = None) -> int:
    from sims import _files

    argv = list(sys.argv[1:] if argv is None else argv)
    # imageio-ffmpeg forks (preexec_fn) to start ffmpeg in its own process group unless told
    # not to; a fork of a process running JAX threads can deadlock (and JAX warns). Without
    # it ffmpeg starts through posix_spawn/vfork; a Ctrl-C then reaches ffmpeg as well,
    # which is what should happen to a run being interrupted.
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
    try:
        with _files.signals_raise():
            _dispatch(argv)
    except UsageError as e:
        print(f"sims: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:
        print("sims: interrupted (SIGINT); no partial files were left behind", file=sys.stderr)
        return 128 + signal.SIGINT
    except _files.Interrupted as e:
        print(f"sims: interrupted ({e}); no partial files were left behind", file=sys.stderr)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
