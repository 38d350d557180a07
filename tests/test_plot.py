"""particles.plot: every view renders headless at the requested size, videos hold the
requested frames, colours follow clusters, and `sims animate` / `sims plot` redraw saved runs
(or fail in one line naming the broken file)."""

from __future__ import annotations

import base64
import time

import imageio.v3 as iio
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

import particles as P
from particles import plot
from particles.analysis import track_clusters


def _sphere(rng, T, n, d):
    x = rng.normal(size=(T, n, d))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cloud(kind, T=4, n=24, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "plane":
        return rng.normal(size=(T, n, 2)) * [2.0, 0.5] + [3.0, -1.0]
    if kind == "circle":
        return _sphere(rng, T, n, 2)
    if kind == "space":
        return rng.uniform(-1, 2, size=(T, n, 3))
    if kind == "sphere":
        return _sphere(rng, T, n, 3)
    return rng.normal(size=(T, n, 5))  # pca


KINDS = ["plane", "circle", "space", "sphere", "pca"]


def _png_shape(fig, path, dpi):
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return iio.imread(path).shape


@pytest.mark.parametrize("kind", KINDS)
def test_each_view_renders_at_the_requested_pixel_size(kind, tmp_path):
    xs = _cloud(kind)
    ts = np.linspace(0, 1, len(xs))
    assert plot.geometry(xs).kind == kind
    fig = plot.frame(ts, xs, 2, size=(4.0, 3.0), dpi=50, colors="#d62728")
    shape = _png_shape(fig, tmp_path / f"{kind}.png", dpi=50)
    assert shape[:2] == (150, 200)
    # the tokens are drawn: pixels of their colour (214, 39, 40) are there
    image = iio.imread(tmp_path / f"{kind}.png")[..., :3].astype(int)
    red = np.all(np.abs(image - [214, 39, 40]) < 30, axis=-1)
    assert red.sum() >= 10


@pytest.mark.parametrize("kind", ["sphere"])
def test_static_figures_render(kind, tmp_path):
    xs = _cloud(kind, T=6)
    ts = np.linspace(0, 2, 6)
    metrics = {"a": np.cos(ts), "b": np.sin(ts)}
    fig = plot.snapshots(ts, xs, [0, 2, 5], columns=2)
    assert len([ax for ax in fig.axes if ax.get_title().startswith("t = ")]) == 3
    assert _png_shape(fig, tmp_path / "s.png", 40)[:2] == (248, 240)  # 2 x 2 grid of 3 x 3.1 in
    fig = plot.summary_figure(ts, xs, metrics, title="x")
    assert _png_shape(fig, tmp_path / "sum.png", 30)[:2] == (198, 480)
    fig = plot.final_state(ts, xs, metrics=metrics, size=(6.0, 2.0), dpi=40)
    assert _png_shape(fig, tmp_path / "f.png", 40)[:2] == (80, 240)
    axes = plot.metric_curves(ts, metrics)
    assert [ax.get_title() for ax in axes] == ["a", "b"]
    np.testing.assert_array_equal(axes[1].lines[0].get_ydata(), np.sin(ts))
    plt.close("all")


def test_velocity_field_on_a_grid_and_on_the_sphere(tmp_path):
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 7), np.linspace(-1, 1, 5)), -1).reshape(-1, 2)
    ax = plot.velocity_field(g, -g, cloud=0.5 * g[:4], stream=True)
    assert _png_shape(ax.figure, tmp_path / "stream.png", 40)[:2] == (200, 200)
    ax = plot.velocity_field(g, -g)
    (quiver,) = [c for c in ax.collections if isinstance(c, matplotlib.quiver.Quiver)]
    np.testing.assert_allclose(quiver.U, -g[:, 0])
    np.testing.assert_allclose(quiver.V, -g[:, 1])
    plt.close("all")
    x = _sphere(np.random.default_rng(1), 1, 40, 3)[0]
    tangent = np.cross(x, [0.0, 0.0, 1.0])
    ax = plot.velocity_field(x, tangent, cloud=x[:5])
    (quiver,) = [c for c in ax.collections if isinstance(c, matplotlib.quiver.Quiver)]
    far = plot.geometry(x[None]).depth(x) < 0
    np.testing.assert_allclose(quiver.get_facecolors()[far, 3], 0.28)
    np.testing.assert_allclose(quiver.get_facecolors()[~far, 3], 1.0)
    assert _png_shape(ax.figure, tmp_path / "sq.png", 40)[:2] == (200, 200)
    with pytest.raises(ValueError, match="stream=True needs points on a full regular grid"):
        plot.velocity_field(g[:-1], -g[:-1], stream=True)
    with pytest.raises(ValueError, match=r"points and vectors must both have shape \(m, d\)"):
        plot.velocity_field(g, g[:, :1])
    plt.close("all")


def test_mp4_and_gif_hold_the_requested_frames_and_size(tmp_path):
    xs = _cloud("sphere", T=7, n=30)
    ts = np.linspace(0, 1, 7)
    mp4 = plot.animate(ts, xs, tmp_path / "a.mp4", resolution=(160, 120), fps=10, progress=False)
    frames = iio.imread(mp4, plugin="pyav") if _has_pyav() else iio.imread(mp4)
    assert frames.shape == (7, 120, 160, 3)
    meta = iio.immeta(mp4, plugin="FFMPEG")
    assert meta["fps"] == pytest.approx(10.0)
    assert meta["codec"] == "h264"
    gif = plot.animate(
        ts, xs, tmp_path / "a.gif", frames=[0, 3, 6], duration=1.5, dpi=30, progress=False
    )
    frames = iio.imread(gif)
    assert frames.shape[0] == 3
    from PIL import Image

    with Image.open(gif) as im:
        assert im.info["duration"] == 500  # 3 frames in 1.5 s
        assert im.size == (126, 126)  # the default 4.2 in square at 30 dpi


def _has_pyav():
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_odd_resolution_is_padded_to_even_for_yuv420p(tmp_path):
    xs = _cloud("plane", T=3)
    mp4 = plot.animate(np.arange(3.0), xs, tmp_path / "o.mp4", resolution=(161, 99), progress=False)
    assert iio.imread(mp4).shape == (3, 100, 162, 3)


def _merging():
    """8 tokens on a line: clusters {0, 1, 2} (size 3) and {3, 4} (size 2) merge at frame 2;
    5, 6, 7 are singletons."""
    xs = np.zeros((4, 8, 2))
    xs[:, :3, 0] = 0.0
    xs[:2, 3:5, 0] = 1.0
    xs[:, 5:, 0] = [[2.0, 3.0, 4.0]]
    xs[:, :, 1] = np.arange(4)[:, None] * 0.1  # everything drifts upwards
    return np.arange(4.0), xs


def test_cluster_colours_follow_clusters_from_frame_to_frame():
    ts, xs = _merging()
    labels = np.asarray(track_clusters(xs, 0.5))
    rgba = plot.cluster_colors(labels)
    assert rgba.shape == (4, 8, 4)
    for label in np.unique(labels):
        assert len(np.unique(rgba[labels == label], axis=0)) == 1  # one colour per label
    # the merged cluster keeps the colour of its larger parent {0, 1, 2}
    np.testing.assert_array_equal(rgba[3, 3], rgba[0, 0])
    assert not np.array_equal(rgba[0, 3], rgba[0, 0])
    # the drawn points carry those colours in every frame
    renderer = plot.Renderer(ts, xs, clusters=labels, dpi=30)
    cloud = renderer.scene.panels[0]
    for i in range(4):
        renderer.render(i)
        np.testing.assert_allclose(cloud.front.get_facecolors(), rgba[i])
        np.testing.assert_allclose(cloud.front.get_offsets(), xs[i])
    # with singletons greyed, the largest final cluster takes the first colour of tab10
    grey = plot.cluster_colors(labels, singletons="0.5")
    np.testing.assert_allclose(grey[:, 5:], 0.5 * np.ones((4, 3, 4)) + [0, 0, 0, 0.5])
    np.testing.assert_allclose(grey[3, 0], matplotlib.colormaps["tab10"](0))


def test_single_frame_cluster_colours_rank_clusters_by_size():
    rgba = plot.cluster_colors(np.array([7, 7, 2, 7, 2, 9]))
    tab10 = matplotlib.colormaps["tab10"]
    np.testing.assert_allclose(rgba[[0, 2, 5]], [tab10(0), tab10(1), tab10(2)])
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(n,\) or \(T, n\)"):
        plot.cluster_colors(np.zeros(3))


def test_colour_by_value_uses_one_norm_for_the_whole_trajectory():
    ts, xs = _merging()
    values = np.arange(32.0).reshape(4, 8)
    renderer = plot.Renderer(ts, xs, colors=values, cmap="viridis", dpi=30)
    renderer.render(3)
    got = renderer.scene.panels[0].front.get_facecolors()
    np.testing.assert_allclose(got[-1], matplotlib.colormaps["viridis"](1.0))
    renderer.render(0)
    got = renderer.scene.panels[0].front.get_facecolors()
    np.testing.assert_allclose(got[0], matplotlib.colormaps["viridis"](0.0))


def test_sphere_far_side_is_dimmed_and_trails_fade():
    xs = _cloud("sphere", T=6, n=50)
    renderer = plot.Renderer(np.arange(6.0), xs, trail=3, colors="k", dpi=30)
    cloud = renderer.scene.panels[0]
    renderer.render(5)
    geo = plot.geometry(xs)
    far = geo.depth(xs[5]) < 0
    assert len(cloud.back.get_offsets()) == far.sum() > 0
    np.testing.assert_allclose(cloud.back.get_facecolors()[:, 3], 0.28)
    np.testing.assert_allclose(cloud.front.get_facecolors()[:, 3], 1.0)
    np.testing.assert_allclose(
        np.sort(cloud.back.get_offsets()[:, 0]), np.sort(geo.screen(xs[5])[far, 0])
    )
    # older segments are fainter, and those ending on the far side dimmed like the tokens
    flat = geo.screen(xs[2:6].reshape(-1, 3)).reshape(4, 50, 2)
    dim = np.where(geo.depth(xs[3:6].reshape(-1, 3)).reshape(3, 50) < 0, 0.28, 1.0)
    expected_alpha = 0.6 * np.array([[0.25], [0.5], [0.75]]) * dim
    expected = {
        tuple(np.round(np.r_[flat[a, j], flat[a + 1, j]], 9)): expected_alpha[a, j]
        for a in range(3)
        for j in range(50)
    }
    drawn = {}
    assert cloud.trails in cloud.ax.collections
    paths = [p.vertices for p in cloud.trails.get_paths()]
    for polyline, rgba in zip(paths, cloud.trails.get_colors(), strict=True):
        for seg in polyline.reshape(-1, 3, 2):  # segments separated by a NaN row
            assert np.all(np.isnan(seg[2]))
            drawn[tuple(np.round(seg[:2].ravel(), 9))] = rgba[3]
    assert drawn.keys() == expected.keys()
    np.testing.assert_allclose([drawn[k] for k in expected], list(expected.values()))
    renderer.render(0)
    assert len(cloud.trails.get_segments()) == 0


def test_pca_view_keeps_one_projection_and_histograms_cosines():
    rng = np.random.default_rng(2)
    T, n = 5, 60
    plane = rng.normal(size=(T, n, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(6, 2)))[0]
    xs = plane @ basis.T + 0.01 * rng.normal(size=(T, n, 6))
    geo = plot.geometry(xs)
    assert geo.kind == "pca"
    np.testing.assert_allclose(geo.basis.T @ geo.basis, np.eye(2), atol=1e-12)
    # the leading axes span the plane of the data
    np.testing.assert_allclose(np.linalg.svd(basis.T @ geo.basis)[1], [1, 1], atol=1e-3)
    aligned = np.ones((2, 30, 4)) + 1e-3 * rng.normal(size=(2, 30, 4))
    renderer = plot.Renderer(np.arange(2.0), aligned, dpi=30)
    hist = renderer.scene.panels[1].hist
    width = 2 / hist.shape[1]
    np.testing.assert_allclose(hist.sum(axis=1) * width, 1.0)
    assert hist[0, -1] == pytest.approx(1 / width)  # every cosine in the last bin


def test_attention_heat_map_is_ordered_by_cluster():
    ts, xs = _merging()
    labels = np.asarray(track_clusters(xs, 0.5))
    A = np.random.default_rng(3).random((4, 8, 8))
    renderer = plot.Renderer(ts, xs, clusters=labels, attention=A, metrics={"m": ts}, dpi=30)
    heat = renderer.scene.panels[1]
    renderer.render(0)
    order = np.argsort(labels[0], kind="stable")
    np.testing.assert_array_equal(heat.image.get_array(), A[0][np.ix_(order, order)])
    cursor = renderer.scene.panels[2].cursor
    renderer.render(2)
    np.testing.assert_array_equal(cursor.get_xdata(), [2.0, 2.0])
    with pytest.raises(ValueError, match=r"attention must have shape \(T, n, n\)"):
        plot.Renderer(ts, xs, attention=A[:, :3], dpi=30)


def test_side_by_side_share_axes_and_titles(tmp_path):
    ts = np.linspace(0, 1, 4)
    a, b = _cloud("plane", seed=1), 3 * _cloud("plane", seed=2)
    renderer = plot.Renderer(
        ts, [a, b], labels=["euler", "tsit5"], metrics={"gap": np.stack([ts, 2 * ts])}, dpi=30
    )
    left, right = renderer.scene.cloud_axes
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    lo, hi = left.get_xlim()
    assert lo <= min(a[..., 0].min(), b[..., 0].min()) and hi >= max(
        a[..., 0].max(), b[..., 0].max()
    )
    assert [left.get_title(), right.get_title()] == ["euler", "tsit5"]
    out = plot.animate(
        ts, [a, b], tmp_path / "ab.gif", labels=["euler", "tsit5"], dpi=30, progress=False
    )
    assert iio.imread(out).shape[0] == 4


def test_inline_video_and_javascript_player():
    ts, xs = np.arange(3.0), _cloud("circle", T=3)
    video = plot.animate(ts, xs, dpi=30, progress=False)
    html = video._repr_html_()
    assert html.startswith("<video") and "autoplay" in html
    payload = html.split("base64,")[1].split('"')[0]
    assert base64.b64decode(payload)[4:8] == b"ftyp"  # an MP4 container
    player = plot.animate(ts, xs, dpi=30, progress=False, embed="jshtml")
    assert player.kind == "jshtml" and player._repr_html_().count("data:image/png;base64,") == 3 + 1


def test_bad_arguments_raise_before_rendering(tmp_path):
    ts, xs = np.arange(4.0), _cloud("plane")
    cases = [
        (dict(path=tmp_path / "a.avi"), r"path must end in .mp4 or .gif; got a.avi"),
        (dict(path=tmp_path / "a.mp4", fps=0), r"fps must be > 0; got 0"),
        (dict(path=tmp_path / "a.mp4", resolution=(100,)), r"resolution must be \(width, height\)"),
        (dict(labels=["one", "two"]), r"labels must be a list of 1 panel titles"),
        (dict(colors=np.ones((3, 4))), r"colors must be a colour, .* got shape \(3, 4\)"),
        (dict(metrics={"m": ts[:3]}), r"metrics\['m'\] must have shape \(T,\) = \(4,\)"),
        (dict(embed="gif"), r"embed must be 'auto', 'video' or 'jshtml'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            plot.animate(ts, xs, **{"progress": False, **kwargs})
    with pytest.raises(ValueError, match=r"xs has 4 frames but ts has 3 times"):
        plot.animate(ts[:3], xs, tmp_path / "a.mp4")
    with pytest.raises(ValueError, match=r"xs\[1\] must have shape \(T, n, d\)"):
        plot.animate(ts, [xs, xs[0]], tmp_path / "a.mp4")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- sims CLI


@pytest.fixture
def saved_run(tmp_path):
    """A small run directory as `sims.run` writes it: 16 tokens on S^2 pulled together
    into two clusters over 5 frames (plotting does not care how they moved)."""
    import diffrax

    rng = np.random.default_rng(0)
    x0 = _sphere(rng, 1, 16, 3)[0]
    target = np.where(np.arange(16)[:, None] < 8, [0.0, 0.0, 1.0], [1.0, 0.0, 0.0])
    s = np.linspace(0, 1, 5)[:, None, None]
    xs = (1 - s) * x0 + s * target
    xs /= np.linalg.norm(xs, axis=-1, keepdims=True)
    ts = np.linspace(0.0, 6.0, 5)
    trajectory = P.Trajectory(
        ts=jnp.asarray(ts),
        xs=jnp.asarray(xs),
        weights=jnp.full(16, 1 / 16),
        num_steps=jnp.asarray(10),
        num_accepted=jnp.asarray(10),
        num_rejected=jnp.asarray(0),
        result=diffrax.RESULTS.successful,
    )
    directory = tmp_path / "run"
    P.io.save_run(
        directory,
        trajectory=trajectory,
        config={
            "experiment": "sphere-clustering",
            "config": {"n": 16, "d": 3, "beta": 9.0, "cluster_tol": 0.05},
        },
        metrics={"ts": ts, "series": {"mean_cosine": np.linspace(0, 0.5, 5)}},
    )
    return directory


def _sims(*args):
    from sims.__main__ import main

    return main([str(a) for a in args])


def test_sims_animate_and_plot_redraw_a_saved_run(saved_run, capsys):
    assert _sims("animate", saved_run, "--quiet", "--fps", 5, "--dpi", 30) == 0
    assert iio.imread(saved_run / "animation.mp4").shape[0] == 5
    assert (
        _sims(
            "animate",
            saved_run,
            "--gif",
            "--every",
            2,
            "--trail",
            2,
            "--quiet",
            "--resolution",
            "192x128",
        )
        == 0
    )
    frames = iio.imread(saved_run / "animation.gif")
    assert frames.shape[:3] == (3, 128, 192)
    assert _sims("plot", saved_run, "--dpi", 40) == 0
    assert iio.imread(saved_run / "figure.png").ndim == 3
    assert iio.imread(saved_run / "final_state.png").ndim == 3
    out = capsys.readouterr().out
    assert "animation.gif" in out and "final_state.png" in out


@pytest.mark.parametrize(
    "breakage, command, message",
    [
        ("missing-dir", "animate", r"run-missing: no such run directory"),
        ("no-trajectory", "plot", r"trajectory.npz: no such file"),
        ("bad-trajectory", "animate", r"trajectory.npz: not a readable trajectory file"),
        ("bad-json", "plot", r"metrics.json: not valid JSON"),
        (
            "short-series",
            "animate",
            r"metrics.json: 'ts' has 3 times but the trajectory has 5 frames",
        ),
    ],
)
def test_sims_fail_in_one_line_naming_the_file(saved_run, capsys, breakage, command, message):
    target = saved_run
    if breakage == "missing-dir":
        target = saved_run.parent / "run-missing"
    elif breakage == "no-trajectory":
        (saved_run / "trajectory.npz").unlink()
    elif breakage == "bad-trajectory":
        (saved_run / "trajectory.npz").write_bytes(b"PK\x03\x04 truncated")
    elif breakage == "bad-json":
        (saved_run / "metrics.json").write_text('{"ts": [0, 1')
    else:
        P.io.write_json(saved_run / "metrics.json", {"ts": [0, 1, 2], "series": {"a": [1, 2, 3]}})
    assert (
        _sims(
            command,
            target,
            "--quiet" if command == "animate" else "--dpi",
            *([] if command == "animate" else [40]),
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("sims: error: ")
    assert __import__("re").search(message, err)
    assert not (saved_run / "animation.mp4").exists()


def test_sims_replay_options_are_checked(saved_run, capsys):
    assert _sims("animate", saved_run, "--fps", 0) == 2
    assert _sims("animate", saved_run, "--resolution", "wide") == 2
    assert _sims("plot", saved_run, "--gif") == 2
    assert _sims("animate") == 2
    assert _sims("plot", saved_run, "--series", "nope") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        "sims: error: --fps: must be > 0; got 0",
        "sims: error: --resolution: expected two numbers like 1280x720; got 'wide'",
        "sims: error: unknown option --gif (see `python -m sims plot --help`)",
        "sims: error: missing RUN_DIR (see `python -m sims animate --help`)",
        f"sims: error: {saved_run / 'metrics.json'}: no series 'nope' (has: mean_cosine)",
    ]


@pytest.mark.slow
def test_4096_tokens_over_200_frames_render_within_a_minute(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_render", Path(__file__).parent.parent / "benchmarks" / "bench_render.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ts, xs, labels = bench.clustering_trajectory(4096, 200)
    start = time.perf_counter()
    plot.animate(ts, xs, tmp_path / "big.mp4", clusters=labels, progress=False)
    assert time.perf_counter() - start < 60
    assert iio.imread(tmp_path / "big.mp4").shape[0] == 200
