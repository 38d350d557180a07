"""Files and signals for run directories: modes, atomic writes, interruptions.

A run directory is built in a hidden temporary sibling (`.NAME.XXXXXXXX.partial`) that holds
a marker file until it is complete, then renamed into place. These helpers give it the
permissions of an ordinary directory, write single files atomically beside their target,
turn SIGTERM and SIGHUP into exceptions (so cleanup code runs as it does for Ctrl-C), and
hold signals back while a rename sequence must not be cut in two.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
"""Name suffix of a run (or file) still being written; never a finished run."""
PARTIAL_MARKER = "INCOMPLETE"
"""File inside a run directory still being written; removed just before it is renamed."""
ASIDE_SUFFIX = ".replaced"
"""Name suffix of an old run renamed aside while a new one takes its place."""

_CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (SIGINT stays `KeyboardInterrupt`); carries the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def umask() -> int:
    """The process umask (read without changing it where /proc tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other way to read it; set it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new ordinary file: 0644 under the usual umask 022."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """Mode of a new ordinary directory: 0755 under the usual umask 022."""
    return 0o777 & ~umask()


def normalize_modes(root: Path) -> None:
    """Give `root` and everything below it (all written by this program) ordinary modes:
    `mkdtemp` creates 0700 directories and `mkstemp` 0600 files, which other users and web
    servers cannot read."""
    files, dirs = file_mode(), dir_mode()
    os.chmod(root, dirs)
    for parent, subdirs, names in os.walk(root):
        for name in subdirs:
            os.chmod(os.path.join(parent, name), dirs)
        for name in names:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                os.chmod(path, files)


def media_problem(path: Path) -> str | None:
    """Why the figure or video at `path` is incomplete, or `None` if its structure is whole.

    ffmpeg stopped by a full disk leaves an MP4 cut short, and imageio-ffmpeg does not look
    at ffmpeg's exit status; so an MP4 must be a sequence of boxes that ends exactly at the
    end of the file and holds `moov` (the index, written last) and `mdat`. A PNG must end
    with its IEND chunk, a GIF with its trailer byte."""
    data = Path(path).read_bytes()
    if path.suffix == ".png" and not data.endswith(b"IEND\xaeB`\x82"):
        return "the PNG is cut short"
    if path.suffix == ".gif" and not data.endswith(b";"):
        return "the GIF is cut short"
    if path.suffix == ".mp4":
        boxes, at = set(), 0
        while at + 8 <= len(data):
            size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
            if size == 1 and at + 16 <= len(data):  # 64-bit size
                size = int.from_bytes(data[at + 8 : at + 16], "big")
            elif size == 0:  # the box runs to the end of the file
                size = len(data) - at
            if size < 8:
                break
            boxes.add(kind)
            at += size
        if at != len(data) or not {b"moov", b"mdat"} <= boxes:
            return "the video encoder wrote an incomplete MP4"
    return None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path for `path`: a file of the same name in a hidden temporary
    directory beside it (`.NAME.XXXXXXXX.partial/NAME`, so writers that take the format or a
    progress-bar label from the name see the real one). On success it replaces `path` with
    mode 0644 (under umask 022); on any exception or interruption it is removed and `path`
    is left as it was. A figure or video that comes out incomplete (see `media_problem`) is
    an `OSError`, as is any failure to write, with `path` as its file name."""
    path = Path(path)
    try:
        folder = Path(
            tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
        )
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    tmp = folder / path.name
    try:
        yield tmp
        problem = media_problem(tmp)
        if problem is not None:
            raise OSError(problem)
        os.chmod(tmp, file_mode())
        raise_if_interrupted()
        os.replace(tmp, path)
    except OSError as e:  # name the file meant, not the temporary one
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        with signals_held():  # a signal now must not leave the temporary folder behind
            shutil.rmtree(folder, ignore_errors=True)


def target_name(name: str) -> str:
    """The file a temporary name of an atomic write stands for:
    `.trajectory.k2j3x9.partial.npz` -> `trajectory.npz`; other names are returned as is."""
    if name.startswith(".") and PARTIAL_SUFFIX in name:
        stem = name[1:].rsplit(PARTIAL_SUFFIX, 1)[0].rsplit(".", 1)[0]
        return stem + name.rsplit(PARTIAL_SUFFIX, 1)[1]
    return name


# Signals that arrived inside `signals_raise`. Python runs a signal handler between any
# two bytecodes, garbage-collector callbacks included, and an exception raised there is
# printed as "Exception ignored" and lost (seen: JAX's XLA gc callback); so every handler
# also records its signal, and `raise_if_interrupted` raises it again before a commit.
_received: list[int] = []
_depth = [0]  # nesting of signals_raise blocks: the outermost one owns `_received`


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)


def _raise_interrupted(signum, frame):
    _received.append(signum)
    raise _exception(signum)


def raise_if_interrupted() -> None:
    """Raise the first signal received inside `signals_raise` again, in case the exception
    its handler raised was swallowed (raised inside a garbage-collector callback)."""
    if _received:
        raise _exception(_received[0])


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Interrupted` and SIGINT raises
    `KeyboardInterrupt`, so `finally` clauses clean up; each is also recorded for
    `raise_if_interrupted`. Only the main thread can receive Python signals; elsewhere this
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth[0] == 0:
        _received.clear()
    _depth[0] += 1
    previous = {}
    for signum in _CAUGHT:
        handler = signal.getsignal(signum)
        # an ignored or custom handler stays
        if handler in (signal.SIG_DFL, None, signal.default_int_handler):
            previous[signum] = handler
            signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _depth[0] -= 1
        if _depth[0] == 0:  # outside every block no signal is pending
            _received.clear()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back during the block; the first that arrives is
    raised when the block ends, so a sequence of renames is never cut in two.

    The Python-level handlers are swapped for ones that only record the signal: blocking
    with `pthread_sigmask` would not do, since the kernel may hand a process-directed
    signal to any thread (JAX runs several) and Python then runs the handler in the main
    thread all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in _CAUGHT}
    for signum, handler in previous.items():
        if handler not in (signal.SIG_IGN, None):
            signal.signal(signum, lambda s, f: pending.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler not in (signal.SIG_IGN, None):
                signal.signal(signum, handler)
        if pending:
            # deliver it again, now to the handler that was in place (raises, or kills)
            signal.raise_signal(pending[0])
