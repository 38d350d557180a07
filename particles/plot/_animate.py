"""The animation pipeline: one renderer and one writer for every scene.

A scene (`particles.plot.AbstractScene`: particle clouds, particles over Gaussian level
sets, densities on the circle) is drawn by a `Renderer` by blitting: the static parts of
the figure (axes, sphere, metric curves, legends) are drawn once, and each frame restores
that background and redraws only the artists that move, whose data are changed in place.
The RGB buffer of each frame goes straight to one writer: MP4 (libx264, yuv420p) through
the ffmpeg binary of imageio-ffmpeg, GIF through Pillow, or an inline notebook animation.
Files are written atomically: complete in a temporary file beside the target, then renamed.
"""

from __future__ import annotations

import base64
import html
import io
import os
import secrets
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ._figures import VIEW, CloudScene
from ._scene import AbstractScene


def ffmpeg_path() -> str:
    """The ffmpeg binary shipped by imageio-ffmpeg; also set as matplotlib's ffmpeg."""
    import imageio_ffmpeg

    path = imageio_ffmpeg.get_ffmpeg_exe()
    matplotlib.rcParams["animation.ffmpeg_path"] = path
    return path


class Renderer:
    """Draws the frames of a scene into RGB arrays `(height, width, 3)` by blitting.

    The scene is built as `scene(fig, ts, data, **options)` on a fresh figure: particle
    clouds by default (`data` a trajectory, options those of `animate`), or any
    `AbstractScene` such as `GaussianScene` and `CircleScene`. `size` in inches, or
    `resolution = (width, height)` in pixels (which wins); the frame is exactly
    `resolution` pixels, or `size * dpi` rounded down.
    """

    def __init__(
        self,
        ts,
        data,
        *,
        scene: type[AbstractScene] = CloudScene,
        size=None,
        resolution=None,
        dpi: int = 100,
        **options,
    ):
        if resolution is not None:
            w, h = resolution
            # a quarter pixel more, so that Agg's rounding down lands on the requested size
            size = ((w + 0.25) / dpi, (h + 0.25) / dpi)
        size = size or scene.default_size(ts, data, **options)
        self.fig = Figure(figsize=size, dpi=dpi, layout="constrained")
        self.canvas = FigureCanvasAgg(self.fig)
        self.scene = scene(self.fig, ts, data, **options)
        for artist in self.scene.dynamic:
            artist.set_animated(True)
        self.canvas.draw()
        # the layout is computed once; later frames only redraw what moves
        self.fig.set_layout_engine("none")
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)

    def __len__(self) -> int:
        return len(self.scene.ts)

    def render(self, i: int) -> np.ndarray:
        self.scene.update(i)
        self.canvas.restore_region(self.background)
        for artist in self.scene.dynamic:
            self.fig.draw_artist(artist)
        return np.asarray(self.canvas.buffer_rgba())[..., :3]


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even width and height (yuv420p subsamples chroma 2x2) by repeating the last
    row or column; returns a C-contiguous copy."""
    h, w = frame.shape[:2]
    return np.ascontiguousarray(np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge"))


def _write_mp4(path: Path, frames, fps: float, crf: int) -> None:
    import imageio_ffmpeg

    writer = None
    try:
        for frame in frames:
            frame = _even(frame)
            if writer is None:
                writer = imageio_ffmpeg.write_frames(
                    str(path),
                    (frame.shape[1], frame.shape[0]),
                    fps=fps,
                    codec="libx264",
                    pix_fmt_in="rgb24",
                    pix_fmt_out="yuv420p",
                    quality=None,
                    macro_block_size=1,
                    ffmpeg_log_level="error",
                    output_params=[
                        "-crf",
                        str(crf),
                        "-preset",
                        "veryfast",
                        "-movflags",
                        "+faststart",
                    ],
                )
                with warnings.catch_warnings():
                    # JAX warns on any fork; ffmpeg is exec'd at once and never runs JAX code
                    warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
                    writer.send(None)
            writer.send(frame)
    finally:
        if writer is not None:
            writer.close()


def _write_gif(path: Path, frames, fps: float) -> None:
    from PIL import Image

    images = [
        Image.fromarray(np.ascontiguousarray(f)).quantize(
            256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
        for f in frames
    ]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=max(20, round(1000 / fps)),  # GIF delays are in 1/100 s; 2 is the floor
        loop=0,
        disposal=1,
    )


class InlineAnimation:
    """An animation to display in a notebook: an HTML5 `<video>` (MP4 embedded in base64),
    or, where no MP4 could be made, a JavaScript player of PNG frames. `save(path)` writes
    the MP4 (or the HTML page of the player)."""

    def __init__(self, html_text: str, data: bytes | None = None, kind: str = "video"):
        self.html, self.data, self.kind = html_text, data, kind

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | Path) -> Path:
        """Write the video or GIF it holds, or the HTML page of the player, atomically."""
        path = Path(path)
        if self.data is not None:
            data = self.data
        else:
            data = f"<!DOCTYPE html><html><body>{self.html}</body></html>\n".encode()
        return _atomically(path, lambda tmp: tmp.write_bytes(data))


def _video_html(data: bytes, width: int) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (
        f'<video width="{width}" controls autoplay loop muted playsinline>'
        f'<source type="video/mp4" src="data:video/mp4;base64,{b64}">'
        "Your browser does not play HTML5 video.</video>"
    )


def _player_html(pngs: list[bytes], fps: float, width: int) -> str:
    """A minimal JavaScript player: play/pause and a slider over embedded PNG frames."""
    uid = f"pa{os.getpid()}{id(pngs)}"
    frames = ",".join(f'"data:image/png;base64,{base64.b64encode(p).decode()}"' for p in pngs)
    delay = max(1, round(1000 / fps))
    return f"""
<div id="{uid}">
<img id="{uid}-img" width="{width}" src="data:image/png;base64,{base64.b64encode(pngs[0]).decode()}"><br>
<button id="{uid}-btn">pause</button>
<input id="{uid}-rng" type="range" min="0" max="{len(pngs) - 1}" value="0" style="width:60%">
</div>
<script>
(function() {{
  var frames = [{frames}], i = 0, playing = true;
  var img = document.getElementById("{uid}-img"), rng = document.getElementById("{uid}-rng"),
      btn = document.getElementById("{uid}-btn");
  function show(k) {{ i = k; img.src = frames[i]; rng.value = i; }}
  rng.oninput = function() {{ show(parseInt(rng.value)); }};
  btn.onclick = function() {{ playing = !playing; btn.textContent = playing ? "pause" : "play"; }};
  setInterval(function() {{ if (playing) show((i + 1) % frames.length); }}, {delay});
}})();
</script>"""


def _check_options(fps, duration, dpi, resolution, crf, n_frames):
    if not fps > 0:
        raise ValueError(f"fps must be > 0; got {fps}")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be > 0 seconds; got {duration}")
    if not (isinstance(dpi, (int, float)) and dpi > 0):
        raise ValueError(f"dpi must be > 0; got {dpi}")
    if resolution is not None:
        if len(resolution) != 2 or not all(int(r) == r and r >= 16 for r in resolution):
            raise ValueError(
                f"resolution must be (width, height) in pixels, each >= 16; got {resolution}"
            )
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51]; got {crf}")
    if n_frames < 1:
        raise ValueError("frames selects no frame")


def _check_path(path) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"path must end in .mp4 or .gif; got {path.name}")
    return path


def _temporary_beside(path: Path) -> Path:
    """A new empty file in the directory of `path`, hidden, with the suffix of `path` (the
    encoders choose the format by it). It is created with mode 0666 less the umask, as
    `open` would create `path` itself, so the renamed file gets the usual permissions."""
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.part{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _atomically(path: Path, fill) -> Path:
    """`fill(tmp)` writes a temporary file beside `path`, which then replaces `path`; on any
    error the temporary file is removed and `path` is left as it was."""
    tmp = _temporary_beside(path)
    try:
        fill(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write(path: str | Path, frames, fps: float, crf: int = 20) -> Path:
    """Encode RGB frames `(height, width, 3)` (any iterable) to `path`: `.mp4` (libx264,
    yuv420p, odd sizes padded to even) or `.gif`.

    The file is written atomically: it is complete in a temporary file beside `path`, then
    renamed, so `path` is either the old file or the whole new one, never a broken video;
    the temporary file is removed if encoding fails. Returns the path.
    """
    path = _check_path(path)
    if path.suffix == ".mp4":
        return _atomically(path, lambda tmp: _write_mp4(tmp, frames, fps, crf))
    return _atomically(path, lambda tmp: _write_gif(tmp, frames, fps))


def _animation(
    scene: type[AbstractScene],
    ts,
    data,
    path,
    *,
    fps: float,
    duration: float | None = None,
    frames: Sequence[int] | None = None,
    dpi: int = 100,
    size: tuple[float, float] | None = None,
    resolution: tuple[int, int] | None = None,
    crf: int = 20,
    embed: str = "auto",
    progress: bool = True,
    **options,
):
    """The pipeline behind every animation: check the options, build the scene in a
    `Renderer`, stream its frames to `write` (a file) or to an `InlineAnimation`. The
    writer's defaults here are those of `animate`, `gaussian_animation` and
    `circle_animation`."""
    ts = np.asarray(ts, dtype=float)
    indices = list(range(len(ts))) if frames is None else [range(len(ts))[i] for i in frames]
    _check_options(fps, duration, dpi, resolution, crf, len(indices))
    path = _check_path(path)
    if embed not in ("auto", "video", "jshtml"):
        raise ValueError(f"embed must be 'auto', 'video' or 'jshtml'; got {embed!r}")
    if duration is not None:
        fps = len(indices) / duration
    renderer = Renderer(ts, data, scene=scene, size=size, resolution=resolution, dpi=dpi, **options)
    name = path.name if path is not None else "animation"
    bar = tqdm(total=len(indices), desc=f"rendering {name}", unit="frame", disable=not progress)

    def stream():
        for i in indices:
            yield renderer.render(i)
            bar.update(1)

    try:
        if path is not None:
            return write(path, stream(), fps, crf)
        return _inline(renderer, stream, fps, crf, embed)
    finally:
        bar.close()


def animate(
    ts,
    xs,
    path: str | Path | None = None,
    *,
    labels: Sequence[str] | None = None,
    metrics: Mapping[str, np.ndarray] | None = None,
    colors=None,
    clusters=None,
    singletons=None,
    cmap: str = "viridis",
    trail: int = 0,
    attention=None,
    fps: float = 20,
    duration: float | None = None,
    frames: Sequence[int] | None = None,
    dpi: int = 100,
    size: tuple[float, float] | None = None,
    resolution: tuple[int, int] | None = None,
    view: tuple[float, float] = VIEW,
    point_size: float | None = None,
    title: str = "",
    time_label: str = "t",
    time_format: str = ".3g",
    crf: int = 20,
    embed: str = "auto",
    progress: bool = True,
):
    """Render a trajectory, or several side by side, to MP4, GIF or an inline animation.

    The view follows the data (see `particles.plot.geometry`): the plane or the circle for
    d = 2, a 3D box or the shaded sphere S^2 for d = 3, a fixed PCA projection next to a
    histogram of pairwise cosines for d > 3. Nothing is recomputed: every panel reads the
    arrays given.

    Args:
        ts: saved times `(T,)` (or layer indices, with `time_label="layer"`).
        xs: a trajectory `(T, n, d)`, or a list of them on the same times, drawn side by
            side with shared axes.
        path: `.mp4` (libx264, yuv420p) or `.gif`, written atomically; `None` returns an
            `InlineAnimation` for a notebook (HTML5 video, or a JavaScript player if ffmpeg
            fails).
        labels: one panel title per trajectory.
        metrics: `{name: (T,) or (k, T)}` time series, drawn with a cursor at the frame and
            titled in words (`particles.plot.metric_label`).
        colors: a colour, RGBA `(n, 4)` / `(T, n, 4)`, or values `(n,)` / `(T, n)` mapped
            through `cmap`; a list of these with one per trajectory.
        clusters: integer labels `(T, n)` (from `particles.metrics.track_clusters`) or
            `(n,)`: colour by cluster (`particles.plot.cluster_colors`): a cluster keeps its
            colour in every frame, and clusters alive at the same time differ.
        singletons: with `clusters`, the colour of tokens alone in their cluster (e.g.
            `"0.65"`), so that only formed clusters are coloured.
        trail: length in frames of the fading trail behind each token (0: none).
        attention: attention matrices `(T, n, n)` (one per trajectory when several), drawn as
            a heat map, rows and columns ordered by `clusters`.
        fps: frames per second; `duration` (seconds) overrides it.
        frames: indices of the saved times to render (default: all).
        dpi, size, resolution: dots per inch, figure size in inches, or `(width, height)`
            in pixels.
        view: camera `(elevation, azimuth)` of 3D views, in degrees.
        time_label, time_format: the label drawn in each cloud panel, `"t = 1.5"`.
        crf: libx264 quality (0 lossless, 23 its default, 51 worst).
        embed: inline only: `"auto"` (video, else the JavaScript player), `"video"`,
            `"jshtml"`.
        progress: show a progress bar.

    Returns:
        The path written, or an `InlineAnimation` when `path` is None.
    """
    return _animation(
        CloudScene,
        ts,
        xs,
        path,
        fps=fps,
        duration=duration,
        frames=frames,
        dpi=dpi,
        size=size,
        resolution=resolution,
        crf=crf,
        embed=embed,
        progress=progress,
        labels=labels,
        metrics=metrics,
        colors=colors,
        clusters=clusters,
        singletons=singletons,
        cmap=cmap,
        trail=trail,
        attention=attention,
        view=view,
        point_size=point_size,
        title=title,
        time_label=time_label,
        time_format=time_format,
    )


def _inline(renderer: Renderer, stream, fps: float, crf: int, embed: str) -> InlineAnimation:
    width = int(renderer.fig.bbox.width)
    if embed in ("auto", "video"):
        with tempfile.TemporaryDirectory() as tmp:
            movie = Path(tmp) / "animation.mp4"
            try:
                _write_mp4(movie, stream(), fps, crf)
                data = movie.read_bytes()
                return InlineAnimation(_video_html(data, width), data, "video")
            except (OSError, RuntimeError):
                if embed == "video":
                    raise
    pngs = []
    for frame in stream():
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="png")
        pngs.append(buf.getvalue())
    return InlineAnimation(_player_html(pngs, fps, width), None, "jshtml")


def inline(path: str | Path, width: int | None = None) -> InlineAnimation:
    """Display a saved `.mp4` or `.gif` in a notebook (embedded, so the notebook carries it)."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".mp4":
        return InlineAnimation(_video_html(data, width or 640), data, "video")
    if path.suffix == ".gif":
        b64 = base64.b64encode(data).decode("ascii")
        w = f' width="{width}"' if width else ""
        return InlineAnimation(
            f'<img{w} src="data:image/gif;base64,{b64}" alt="{html.escape(path.name)}">',
            data,
            "gif",
        )
    raise ValueError(f"path must end in .mp4 or .gif; got {path.name}")
