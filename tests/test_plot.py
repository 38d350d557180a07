"""particles.plot: every view renders headless at the requested size, videos hold the
requested frames, colours follow clusters, and `sims animate` / `sims plot` redraw saved runs
(or fail in one line naming the broken file)."""

from __future__ import annotations

import base64
import os
import time

import imageio.v3 as iio
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

import particles as P
from particles import plot
from particles.metrics import track_clusters

# reading videos back spawns ffmpeg; JAX warns on any fork once it has started, but the
# child execs at once and never runs JAX code
pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")


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


def _label_process(seed, n=60, T=40):
    """Cluster labels `(T, n)` as `track_clusters` numbers them: 30 pairs at first (more
    live clusters than tab10 has colours), then random merges (the larger label lives on)
    and splits (part of a cluster leaves under a fresh label, never reused)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) // 2
    fresh = labels.max() + 1
    frames = [labels.copy()]
    for _ in range(1, T):
        labels = labels.copy()
        live = np.unique(labels)
        if len(live) > 1:
            a, b = rng.choice(live, 2, replace=False)
            labels[labels == b] = a
        if rng.random() < 0.3:
            members = np.flatnonzero(labels == rng.choice(live))
            if len(members) >= 2:
                labels[members[: len(members) // 2]] = fresh
                fresh += 1
        frames.append(labels)
    return np.stack(frames)


def _coloured(labels, rgba, grey=None):
    """Per frame, {label: colour} of the clusters drawn in colour (not the singleton grey)."""
    out = []
    for t in range(labels.shape[0]):
        frame = {}
        for label in np.unique(labels[t]):
            colours = np.unique(rgba[t][labels[t] == label], axis=0)
            assert len(colours) == 1  # one colour per cluster in a frame
            if grey is None or not np.allclose(colours[0], grey):
                frame[int(label)] = tuple(colours[0])
        out.append(frame)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("singletons", [None, "0.65"])
def test_clusters_alive_at_the_same_time_never_share_a_colour(seed, singletons):
    labels = _label_process(seed)
    rgba = plot.cluster_colors(labels, singletons=singletons)
    grey = None if singletons is None else matplotlib.colors.to_rgba(singletons)
    frames = _coloured(labels, rgba, grey)
    busiest = max(len(f) for f in frames)
    assert busiest > 10  # more live clusters than tab10 has colours
    for t, frame in enumerate(frames):
        assert len(set(frame.values())) == len(frame), f"two live clusters share a colour at {t}"
    # a label keeps its colour for the whole trajectory
    for label in np.unique(labels):
        assert len(np.unique(rgba[labels == label][:, :3].round(12), axis=0)) <= 1 + (
            singletons is not None
        )
    # the palette is extended only as far as needed: as many colours as live clusters at
    # the busiest frame, colours of merged-away clusters being passed on
    used = {c for frame in frames for c in frame.values()}
    assert len(used) == busiest
    assert len({frame[k] for frame in frames for k in frame}) == busiest
    # the clusters of the last frame own the first colours of tab10, largest first
    last = frames[-1]
    sizes = {k: int(np.sum(labels[-1] == k)) for k in last}
    ranked = sorted(last, key=lambda k: (-sizes[k], k))
    tab10 = [  # less its grey when singletons are grey
        c
        for c in matplotlib.colormaps["tab10"].colors
        if singletons is None or np.linalg.norm(np.subtract(c, 0.65)) >= 0.3
    ]
    np.testing.assert_allclose([last[k][:3] for k in ranked], tab10[: len(ranked)])


def test_a_colour_passes_on_only_after_its_cluster_is_gone():
    # clusters A, B live in frames 0-1; B merges into A at frame 2; C forms at frame 3
    labels = np.array(
        [
            [0, 0, 0, 1, 1, 2, 3],
            [0, 0, 0, 1, 1, 2, 3],
            [0, 0, 0, 0, 0, 2, 3],
            [0, 0, 0, 0, 0, 4, 4],
        ]
    )
    rgba = plot.cluster_colors(labels, singletons="0.5")
    tab10 = matplotlib.colormaps["tab10"].colors
    np.testing.assert_allclose(rgba[0, 0, :3], tab10[0])  # A: the final cluster
    np.testing.assert_allclose(rgba[0, 3, :3], tab10[1])  # B, alive with A
    np.testing.assert_allclose(rgba[3, 5, :3], tab10[1])  # C takes B's colour once B is gone
    np.testing.assert_allclose(rgba[:3, 5], [matplotlib.colors.to_rgba("0.5")] * 3)
    # 25 clusters at once: 25 different colours, no palette entry close to the grey
    many = plot.cluster_colors(np.arange(50)[None] // 2, singletons="0.65")[0]
    distinct = np.unique(many[::2], axis=0)
    assert len(distinct) == 25
    assert np.min(np.linalg.norm(distinct[:, :3] - 0.65, axis=1)) >= 0.3


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


# --------------------------------------------------------------------------- words, titles, scales

TITLE = r"sphere-clustering: n = 256, d = 3, $\beta$ = 9, normalization = softmax"


def _texts_outside(fig, renderer=None):
    """Titles (of the figure, its subfigures and its axes) and axis labels whose drawn box
    leaves the figure, as `(text, bounds)`."""
    if renderer is None:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
    texts = [
        f._suptitle for f in fig.findobj(lambda a: isinstance(a, matplotlib.figure.FigureBase))
    ]
    for ax in fig.findobj(lambda a: isinstance(a, matplotlib.axes.Axes)):
        texts += [ax.title, ax._left_title, ax._right_title]
        if ax.axison:
            texts += [ax.xaxis.label, ax.yaxis.label]
    width, height = fig.bbox.width, fig.bbox.height
    outside = []
    for text in texts:
        if text is None or not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            outside.append((text.get_text(), box.bounds))
    return outside


def test_every_title_lies_inside_its_figure():
    ts = np.linspace(0, 10, 5)
    xs = _cloud("sphere", T=5, n=40)
    metrics = {"clusters": np.array([40, 20, 8, 5, 3.0]), "mean_cosine": ts / 10}
    figures = {
        "final_state": plot.final_state(ts, xs, title=TITLE, dpi=110),
        "summary": plot.summary_figure(ts, xs, metrics, title=TITLE),
        "frame with metrics": plot.frame(ts, xs, 2, metrics=metrics, title=TITLE),
        "narrow": plot.final_state(ts, xs, title=TITLE + ", " + TITLE, size=(2.0, 2.4)),
    }
    for name, fig in figures.items():
        assert _texts_outside(fig) == [], name
    # the long title is wrapped at a comma, not shrunk below legibility
    suptitle = figures["final_state"]._suptitle
    assert suptitle.get_text().count("\n") == 1 and suptitle.get_fontsize() >= 10
    assert suptitle.get_text().replace("\n", " ") == TITLE
    plt.close("all")
    # frames drawn by the animation renderer, layout computed once
    renderer = plot.Renderer(ts, xs, metrics=metrics, title=TITLE, dpi=40)
    renderer.render(4)
    assert _texts_outside(renderer.fig, renderer.canvas.get_renderer()) == []
    gauss = plot.Renderer(
        ts,
        _cloud("plane", T=5),
        scene=plot.GaussianScene,
        means=np.zeros((5, 2)),
        covs=np.tile(np.eye(2), (5, 1, 1)),
        title=TITLE,
        size=(3.0, 3.0),
        dpi=50,
    )
    gauss.render(0)
    assert _texts_outside(gauss.fig, gauss.canvas.get_renderer()) == []


def test_a_title_that_fits_is_left_alone():
    fig = plot.final_state(np.arange(2.0), _cloud("sphere", T=2), title="short", dpi=50)
    assert fig._suptitle.get_text() == "short" and fig._suptitle.get_fontsize() == 12
    plt.close(fig)
    # commas inside mathtext are not break points
    fig = plt.figure(figsize=(1.5, 1.0))
    text = fig.suptitle(r"$f(a, b, c, d)$, then words, and more words")
    plot.fit_title(text)
    assert text.get_text().startswith("$f(a, b, c, d)$,\n")
    plt.close(fig)
    # without commas, between words, before any shrinking
    fig = plt.figure(figsize=(1.6, 1.6), dpi=100)
    text = fig.suptitle("the flow of many tokens on the sphere over time")
    plot.fit_title(text)
    assert text.get_fontsize() == 12 and text.get_text().count("\n") >= 2
    assert text.get_text().replace("\n", " ") == "the flow of many tokens on the sphere over time"
    assert _texts_outside(fig) == []
    plt.close(fig)


def test_metric_panels_are_titled_in_words_with_units():
    ts = np.linspace(0, 10, 6)
    series = {
        "energy": ts,
        "clusters": np.array([256, 40, 7, 6, 6, 5.0]),
        "mean_cosine": ts / 10,
        "my_new_metric": ts,
    }
    axes = plot.metric_curves(ts, series)
    assert [ax.get_title() for ax in axes] == [
        "interaction energy",
        "number of clusters",
        "mean pairwise cosine",
        "my new metric",  # unknown key: underscores become spaces
    ]
    assert axes[0].get_ylabel() == r"$E_\beta$" and axes[3].get_ylabel() == ""
    assert plot.metric_label("sphere_drift").title == "distance off the sphere"
    assert plot.metric_label("a_b").title == "a b" and plot.metric_label("a_b").scale == "linear"
    # the same words in the animation's metric panels and in run_curves
    renderer = plot.Renderer(ts, _cloud("sphere", T=6), metrics=series, dpi=30)
    panels = [p.cursor.axes for p in renderer.scene.panels if hasattr(p, "cursor")]
    assert [ax.get_title() for ax in panels] == [ax.get_title() for ax in axes]
    # four panels beside a 4.2 in cloud keep a readable height (they were squeezed to 5 %
    # of the figure by a gridspec spacing on top of the layout's), one time axis at the bottom
    heights = [ax.get_position().height for ax in panels]
    assert min(heights) > 0.13
    assert [ax.get_xlabel() for ax in panels] == ["", "", "", "time t"]
    assert [ax.get_yscale() for ax in panels] == ["linear", "log", "linear", "linear"]
    curves = plot.run_curves(ts, {"effective_rank": np.stack([ts, ts])}, labels=["a", "b"])
    assert curves[0].get_title() == "effective rank"
    plt.close("all")


def test_cluster_counts_are_drawn_on_a_log_axis_that_shows_the_plateaus():
    # 256 tokens gather into 6 clusters, which merge to 5 then 4: the plateaus at the end
    ts = np.linspace(0, 30, 151)
    counts = np.where(ts < 8, 256 * np.exp(-0.48 * ts), 6.0)
    counts = np.where(ts > 22, 5.0, counts)
    counts = np.where(ts > 28, 4.0, np.maximum(counts, 4.0)).round()
    for ax in (
        plot.metric_curves(ts, {"clusters": counts})[0],
        plot.run_curves(ts, {"clusters": counts})[0],
        plot.summary_figure(ts, _cloud("sphere", T=151, n=8), {"clusters": counts}).axes[-1],
    ):
        assert ax.get_yscale() == "log"
        ax.figure.canvas.draw()
        lo, hi = ax.get_ylim()
        assert lo <= 4 and hi >= 256
        # one merge (6 -> 5 clusters) moves the curve by over 3 % of the panel's height;
        # on the old linear axis from 0 to 256 it moved by 0.4 %
        y = ax.transAxes.inverted().transform(ax.transData.transform([[1, 5], [1, 6]]))[:, 1]
        assert y[1] - y[0] > 0.03
        labels = {t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi}
        assert {"5", "10", "20", "50", "100", "200"} <= labels
    # a series that touches zero keeps a linear axis instead of losing its points
    ax = plot.run_curves(ts, {"clusters": counts - 4}, logy=())[0]
    assert ax.get_yscale() == "linear"
    ax = plot.run_curves(ts, {"energy": ts + 1}, logy=("energy",))[0]
    assert ax.get_yscale() == "log"
    plt.close("all")


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


def test_inline_animations_save_what_they_show(tmp_path):
    ts, xs = np.arange(3.0), _cloud("circle", T=3)
    gif = plot.animate(ts, xs, tmp_path / "a.gif", dpi=20, progress=False)
    shown = plot.inline(gif, width=100)
    assert shown.kind == "gif" and 'width="100"' in shown._repr_html_()
    # the saved copy is the GIF itself (it used to be written as an HTML page)
    assert shown.save(tmp_path / "copy.gif").read_bytes() == gif.read_bytes()
    video = plot.animate(ts, xs, dpi=20, progress=False, embed="video")
    assert video.save(tmp_path / "v.mp4").read_bytes()[4:8] == b"ftyp"
    page = plot.animate(ts, xs, dpi=20, progress=False, embed="jshtml").save(tmp_path / "p.html")
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o666 & ~_umask()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "copy.gif", "p.html", "v.mp4"]


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


# --------------------------------------------------------------------------- one pipeline


def _gaussian(T=5, n=80):
    """Particles `(T, n, 2)` and the moments `N(m(t), S(t))` they are drawn over: a mean
    moving right, a covariance stretching along x; frame 3 has no finite moments."""
    rng = np.random.default_rng(4)
    means = np.stack([np.linspace(0, 2, T), np.zeros(T)], 1)
    covs = np.stack([np.diag([1 + t, 0.5]) for t in range(T)])
    xs = means[:, None] + rng.normal(size=(T, n, 2)) @ np.sqrt(covs)
    means[3], covs[3] = np.nan, np.nan
    return np.linspace(0, 1, T), xs, means, covs


def _circle(T=4, n=300, cells=32):
    rng = np.random.default_rng(5)
    angles = rng.vonmises(1.0, np.linspace(0.5, 4, T)[:, None], size=(T, n))
    theta = (np.arange(cells) + 0.5) * 2 * np.pi / cells
    densities = np.exp(np.cos(theta - 1.0)[None] * np.linspace(0.5, 4, T)[:, None])
    densities /= densities.sum(1, keepdims=True) * (2 * np.pi / cells)
    return np.arange(float(T)), angles, theta, densities


def test_gaussian_scene_draws_the_level_ellipses_of_each_frame():
    ts, xs, means, covs = _gaussian()
    renderer = plot.Renderer(
        ts, xs, scene=plot.GaussianScene, means=means, covs=covs, radii=(1, 2), dpi=30
    )
    scene = renderer.scene
    assert isinstance(scene, plot.AbstractScene)
    for i in (0, 4):
        renderer.render(i)
        np.testing.assert_allclose(scene.cloud.front.get_offsets(), xs[i])
        for line, r in zip(scene.lines, (1, 2), strict=True):
            z = np.stack(line.get_data(), 1) - means[i]
            # (x - m)^T S^-1 (x - m) = r^2 on every drawn point
            np.testing.assert_allclose(np.einsum("pi,ij,pj->p", z, np.linalg.inv(covs[i]), z), r**2)
    renderer.render(3)  # no finite moments: particles only
    assert all(len(line.get_xdata()) == 0 for line in scene.lines)
    assert scene.time.texts[0].get_text() == "t = 0.75"
    with pytest.raises(ValueError, match=r"means and covs must have shapes \(T, 2\) and"):
        plot.Renderer(ts, xs, scene=plot.GaussianScene, means=means[:2], covs=covs, dpi=30)


def test_circle_scene_draws_histograms_over_the_density():
    ts, angles, theta, densities = _circle()
    renderer = plot.Renderer(
        ts, angles, scene=plot.CircleScene, theta=theta, densities=densities, bins=16, dpi=30
    )
    scene = renderer.scene
    for i in range(4):
        renderer.render(i)
        heights = scene.stairs.get_data().values
        expected = np.histogram(np.mod(angles[i], 2 * np.pi), 16, (0, 2 * np.pi), density=True)
        np.testing.assert_allclose(heights, expected[0])
        assert np.sum(heights) * 2 * np.pi / 16 == pytest.approx(1.0)
        np.testing.assert_array_equal(scene.line.get_ydata(), densities[i])
    # the axis holds the highest histogram bar and density of every frame
    assert scene.ax.get_ylim()[1] >= max(scene.hist.max(), densities.max())


@pytest.mark.parametrize("kind", ["clouds", "gaussian", "circle"])
def test_every_scene_goes_through_one_atomic_writer(kind, tmp_path):
    ts, xs, means, covs = _gaussian()
    cts, angles, theta, densities = _circle()
    make = {
        "clouds": lambda path, **kw: plot.animate(ts, xs, path, **kw),
        "gaussian": lambda path, **kw: plot.gaussian_animation(ts, xs, means, covs, path, **kw),
        "circle": lambda path, **kw: plot.circle_animation(
            cts, angles, theta, densities, path, **kw
        ),
    }[kind]
    T = len(cts) if kind == "circle" else len(ts)
    old = os.umask(0o027)
    try:
        mp4 = make(tmp_path / "a.mp4", resolution=(192, 128), dpi=50, fps=4, progress=False)
        gif = make(tmp_path / "a.gif", frames=[0, -1], dpi=20, progress=False)
    finally:
        os.umask(old)
    assert iio.imread(mp4).shape == (T, 128, 192, 3)
    assert iio.imread(gif).shape[0] == 2
    # created like any file under the umask (0666 & ~0o027), not with mkstemp's 0600
    assert [p.stat().st_mode & 0o777 for p in (mp4, gif)] == [0o640, 0o640]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.mp4"]  # no temporaries
    inline = make(None, dpi=20, progress=False, embed="jshtml")
    assert inline.kind == "jshtml" and inline._repr_html_().count("data:image/png") == T + 1
    with pytest.raises(ValueError, match=r"path must end in .mp4 or .gif; got a.avi"):
        make(tmp_path / "a.avi", progress=False)
    with pytest.raises(ValueError, match=r"fps must be > 0"):
        make(tmp_path / "b.mp4", fps=0, progress=False)
    assert not (tmp_path / "b.mp4").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    frame = np.zeros((20, 30, 3), np.uint8)
    for suffix in (".mp4", ".gif"):
        path = plot.write(tmp_path / f"v{suffix}", [frame, frame + 255], fps=5)
        before = path.read_bytes()
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()

        def broken():
            yield frame
            yield frame
            raise RuntimeError("the renderer failed")

        with pytest.raises(RuntimeError, match="the renderer failed"):
            plot.write(path, broken(), fps=5)
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif", "v.mp4"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        stats=P.Stats(
            num_steps=jnp.asarray(10), num_accepted=jnp.asarray(10), num_rejected=jnp.asarray(0)
        ),
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
