"""Views of clouds and trajectories, and static figures built from them.

A view turns a trajectory `(T, n, d)` into points on a flat axis, fixed for the whole
trajectory so that frames stay comparable:

- `plane`: d = 2; `circle`: d = 2 on the unit circle (drawn);
- `space`: d = 3, an orthographic camera, far tokens paler;
- `sphere`: d = 3 on S^2, a shaded translucent sphere, tokens on the far side dimmed behind it;
- `pca`: d > 3, the two leading principal axes of the whole trajectory, next to a histogram
  of pairwise cosines.

3D views are projected by hand onto a 2D axis (an orthographic camera) rather than drawn
with `mplot3d`: the sphere is drawn once and every frame only moves point collections, which
is what makes thousands of tokens over hundreds of frames cheap to render.

Everything here reads arrays (trajectories, metric series, attention matrices, velocity
fields) and never recomputes dynamics.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ._labels import fit_title, style_metric_axis, suptitle
from ._scene import AbstractScene, TimeLabel, check_times

VIEW = (20.0, -60.0)
"""Default camera of 3D views: (elevation, azimuth) in degrees, as in matplotlib."""

_DIM = 0.28  # opacity of tokens on the far side of the sphere
_SPHERE_RGB = np.array([0.62, 0.68, 0.78])
_HIST_TOKENS = 512  # pairwise-cosine histograms use at most this many tokens (fixed subset)
_HIST_BINS = 48


def _is_on_sphere(x: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.linalg.norm(x, axis=-1) - 1) < 1e-3))


def _as_trajectories(xs, ts=None) -> tuple[list[np.ndarray], bool]:
    """One trajectory `(T, n, d)` or a list of them -> (list, several?), shapes checked."""
    several = isinstance(xs, (list, tuple))
    trajectories = [np.asarray(x) for x in xs] if several else [np.asarray(xs)]
    if not trajectories:
        raise ValueError("xs must be a trajectory (T, n, d) or a non-empty list of them")
    for k, x in enumerate(trajectories):
        name = f"xs[{k}]" if several else "xs"
        if x.ndim != 3:
            raise ValueError(f"{name} must have shape (T, n, d); got {x.shape}")
        if ts is not None and x.shape[0] != len(ts):
            raise ValueError(f"{name} has {x.shape[0]} frames but ts has {len(ts)} times")
        if x.shape[-1] != trajectories[0].shape[-1]:
            raise ValueError(
                f"all trajectories must have the same dimension d; {name} has d = {x.shape[-1]}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN or inf")
    return trajectories, several


# --------------------------------------------------------------------------- geometry


def camera(view: tuple[float, float] = VIEW) -> np.ndarray:
    """Orthographic camera `(3, 3)`: rows are screen right, screen up and the direction
    towards the viewer, for `view = (elevation, azimuth)` in degrees (matplotlib's angles)."""
    elev, azim = np.deg2rad(view)
    toward = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    right = np.array([-np.sin(azim), np.cos(azim), 0.0])
    return np.stack([right, np.cross(toward, right), toward])


@dataclass(frozen=True)
class Geometry:
    """How a trajectory is drawn: its view kind, the fixed linear map to the screen and to
    depth, and the shared limits of the panels."""

    kind: str
    basis: np.ndarray  # (d, 2): screen coordinates are (x - center) @ basis
    center: np.ndarray
    toward: np.ndarray | None  # (d,): depth towards the viewer, 3D views only
    limits: tuple[float, float, float, float]
    box: np.ndarray | None = None  # (2, 3): lowest and highest corner, "space" view only

    def screen(self, x: np.ndarray) -> np.ndarray:
        return (x - self.center) @ self.basis

    def depth(self, x: np.ndarray) -> np.ndarray | None:
        return None if self.toward is None else (x - self.center) @ self.toward


def geometry(xs, *, view: tuple[float, float] = VIEW, sphere: bool | None = None) -> Geometry:
    """The view of a trajectory `(T, n, d)` (or a list of them, which share it).

    `sphere=None` detects clouds on the unit sphere (every norm within 1e-3 of 1). For
    d > 3 the screen axes are the two leading principal axes of all frames together.
    """
    trajectories, _ = _as_trajectories(xs)
    points = np.concatenate([x.reshape(-1, x.shape[-1]) for x in trajectories]).astype(np.float64)
    d = points.shape[1]
    sphere = _is_on_sphere(points) if sphere is None else sphere
    if d < 2:
        raise ValueError(f"clouds are drawn for d >= 2; got d = {d}")
    if d == 3:
        cam = camera(view)
        kind = "sphere" if sphere else "space"
        center = np.zeros(3) if sphere else 0.5 * (points.min(0) + points.max(0))
        basis, toward = cam[:2].T, cam[2]
    elif d == 2:
        kind, center, basis, toward = "circle" if sphere else "plane", np.zeros(2), np.eye(2), None
    else:
        kind, toward = "pca", None
        center = points.mean(axis=0)
        sample = points[:: max(1, len(points) // 200_000)] - center
        _, _, vt = np.linalg.svd(sample, full_matrices=False)
        # a sign convention so that the picture does not flip between runs
        basis = vt[:2].T * np.sign(vt[:2].sum(axis=1) + 1e-300)
    if kind in ("sphere", "circle"):
        limits = (-1.08, 1.08, -1.08, 1.08)
    else:
        flat = (points - center) @ basis
        if kind == "space":  # any rotation of the box fits
            r = 0.5 * np.linalg.norm(points.max(0) - points.min(0))
            lo, hi = np.array([-r, -r]), np.array([r, r])
        else:
            lo, hi = flat.min(0), flat.max(0)
        half = 0.5 * max(float((hi - lo).max()), 1e-9) * 1.08
        mid = 0.5 * (lo + hi)
        limits = (mid[0] - half, mid[0] + half, mid[1] - half, mid[1] + half)
    box = np.stack([points.min(0), points.max(0)]) if kind == "space" else None
    return Geometry(kind, basis, center, toward, limits, box)


def _sphere_shade(resolution: int = 192) -> np.ndarray:
    """RGBA image of a translucent Lambert-shaded disk: the front hemisphere of S^2."""
    u = np.linspace(-1, 1, resolution)
    X, Y = np.meshgrid(u, u)
    r2 = X**2 + Y**2
    Z = np.sqrt(np.clip(1 - r2, 0, None))
    light = np.array([-0.45, 0.55, 0.7])
    light /= np.linalg.norm(light)
    lambert = np.clip(X * light[0] + Y * light[1] + Z * light[2], 0, 1)
    rgba = np.zeros((resolution, resolution, 4))
    rgba[..., :3] = _SPHERE_RGB * (0.55 + 0.45 * lambert[..., None])
    rgba[..., 3] = np.where(r2 <= 1, 0.30 + 0.12 * (1 - Z), 0.0)
    return rgba


def _draw_background(ax, geo: Geometry, view) -> None:
    """The static part of a cloud panel: limits, aspect, and the sphere, circle or box."""
    ax.set_xlim(*geo.limits[:2])
    ax.set_ylim(*geo.limits[2:])
    ax.set_aspect("equal")
    if geo.kind == "plane":
        ax.grid(alpha=0.25)
        return
    if geo.kind == "pca":
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.grid(alpha=0.25)
        return
    ax.set_axis_off()
    t = np.linspace(0, 2 * np.pi, 241)
    if geo.kind == "circle":
        ax.plot(np.cos(t), np.sin(t), c="0.75", lw=1.0, zorder=0)
        return
    cam = camera(view)
    if geo.kind == "sphere":
        ax.plot(np.cos(t), np.sin(t), c="0.55", lw=0.8, zorder=0)
        circles = [np.stack([np.cos(t), np.sin(t), 0 * t], 1)]  # equator
        for phi in np.linspace(0, np.pi, 6, endpoint=False):  # meridians
            circles.append(
                np.stack([np.cos(t) * np.cos(phi), np.cos(t) * np.sin(phi), np.sin(t)], 1)
            )
        for z in (-0.5, 0.5):  # two parallels
            rho = np.sqrt(1 - z**2)
            circles.append(np.stack([rho * np.cos(t), rho * np.sin(t), z + 0 * t], 1))
        for c in circles:
            flat, depth = c @ cam[:2].T, c @ cam[2]
            front = np.where(depth >= 0, flat.T, np.nan)
            back = np.where(depth < 0, flat.T, np.nan)
            ax.plot(*back, c="0.7", lw=0.4, ls=(0, (2, 3)), zorder=0)
            ax.plot(*front, c="0.5", lw=0.5, alpha=0.8, zorder=3.5)
        return
    # space: the bounding box of the trajectory, as a wire frame
    lo, hi = geo.box
    corners = np.array([[(lo, hi)[b >> k & 1][k] for k in range(3)] for b in range(8)])
    flat = geo.screen(corners)
    for a in range(8):
        for k in range(3):
            if not a >> k & 1:
                b = a | 1 << k
                ax.plot(flat[[a, b], 0], flat[[a, b], 1], c="0.8", lw=0.6, zorder=0)


# --------------------------------------------------------------------------- colours


def _extension_candidates() -> np.ndarray:
    """Saturated RGB colours to extend a palette with: a grid of 36 hues, 3 saturations and
    3 values, none grey, none so light that it vanishes on white."""
    h, sat, val = np.meshgrid(np.arange(36) / 36, [0.5, 0.75, 1.0], [0.5, 0.72, 0.95])
    rgb = matplotlib.colors.hsv_to_rgb(np.stack([h, sat, val], -1).reshape(-1, 3))
    return rgb[rgb @ [0.2126, 0.7152, 0.0722] < 0.8]


def _palette(name: str, k: int, avoid=None) -> np.ndarray:
    """`k` distinct RGBA colours: the entries of the qualitative colormap `name` (10
    evenly spaced samples of a continuous one) in order, then, when more are needed, each
    next colour the saturated one farthest from all those chosen so far (and from `avoid`).
    Entries within 0.3 (RGB distance) of the colour `avoid` (the grey of singletons) are
    left out, so that no cluster looks like a lone token."""
    cmap = matplotlib.colormaps[name]
    base = (
        np.asarray(cmap.colors, float)
        if isinstance(cmap, matplotlib.colors.ListedColormap)
        else cmap(np.linspace(0, 1, 10))
    )
    base = matplotlib.colors.to_rgba_array(base)[:, :3]
    taken = [np.zeros((0, 3))]
    if avoid is not None:
        grey = np.asarray(matplotlib.colors.to_rgba(avoid)[:3])
        base = base[np.linalg.norm(base - grey, axis=1) >= 0.3]
        taken.append(grey[None])
    chosen = list(base[:k])
    if len(chosen) < k:
        # a rough perceptual distance: the eye tells greens apart best, blues worst
        weight = np.sqrt([2.0, 4.0, 3.0])
        candidates = _extension_candidates() * weight
        others = np.concatenate([*taken, np.array(chosen).reshape(-1, 3)]) * weight
        gap = np.min(np.linalg.norm(candidates[:, None] - others[None], axis=-1), axis=1)
        for _ in range(min(k - len(chosen), len(candidates))):
            best = int(np.argmax(gap))
            chosen.append(candidates[best] / weight)
            gap = np.minimum(gap, np.linalg.norm(candidates - candidates[best], axis=1))
            gap[best] = -1.0  # never twice
        # beyond the grid (hundreds of clusters at once): golden-angle hues, all distinct
        j = np.arange(k - len(chosen))
        hsv = np.stack(
            [(0.6180339887498949 * j) % 1.0, 0.6 + 0.3 * (j % 2), 0.55 + 0.3 * (j % 3 == 0)], 1
        )
        chosen += list(matplotlib.colors.hsv_to_rgb(hsv))
    rgb = np.array(chosen, float).reshape(k, 3)
    return np.concatenate([rgb, np.ones((k, 1))], axis=1)


def _colour_slots(present: np.ndarray, size: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Palette slot of each label, given `present (T, L)` (the label is a coloured cluster
    in that frame) and its size `(T, L)`: labels alive at the same time get different slots,
    and a slot is reused only by a label born after the slot's previous owner is gone.

    Each label holds its slot from its first to its last coloured frame. Labels are taken
    from the last frame backwards (the clusters that survive first, largest first, so the
    final clusters own the first colours), each getting the smallest free slot: the greedy
    colouring of an interval graph in order of right end, which uses exactly as many slots
    as there are clusters alive at the busiest frame. `-1` for labels never coloured.
    """
    T, L = present.shape
    alive = present.any(axis=0)
    first = np.argmax(present, axis=0)
    last = T - 1 - np.argmax(present[::-1], axis=0)
    slots = np.full(L, -1)
    free: list[int] = []  # a min-heap of released slots
    used = 0
    births: dict[int, list[int]] = {}
    order = np.lexsort((labels, -size[last, np.arange(L)], -last))
    by_end: dict[int, list[int]] = {}
    for label in order[alive[order]]:
        by_end.setdefault(int(last[label]), []).append(int(label))
        births.setdefault(int(first[label]), []).append(int(label))
    for t in range(T - 1, -1, -1):
        for label in by_end.get(t, ()):
            if free:
                slots[label] = heapq.heappop(free)
            else:
                slots[label], used = used, used + 1
        # going back in time, a label is born here: before t its slot is free again
        for label in births.get(t, ()):
            heapq.heappush(free, int(slots[label]))
    return slots


def cluster_colors(labels, palette: str = "tab10", singletons=None) -> np.ndarray:
    """RGBA colours from cluster labels: distinct clusters alive at the same time have
    distinct colours.

    `labels (n,)`: clusters ranked by size, largest first, so a cluster's colour does not
    depend on its label value. `labels (T, n)` (from `particles.metrics.track_clusters`):
    one colour per label for the whole trajectory, so a cluster keeps its colour from frame
    to frame; the clusters of the last frame take the first colours, largest first, and a
    colour passes to another cluster only after its cluster is gone (merged away). When
    more clusters live at once than the palette has colours, the palette is extended with
    further distinct colours rather than reused. `singletons`: a colour for tokens alone in
    their cluster in that frame (e.g. `"0.65"`, grey), so that only clusters that have formed
    are coloured; palette entries close to it are skipped.

    Returns `(n, 4)` or `(T, n, 4)`.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be integers of shape (n,) or (T, n); got {labels.dtype} {labels.shape}"
        )
    frames = labels.reshape(-1, labels.shape[-1])
    unique, inverse = np.unique(frames, return_inverse=True)
    inverse = inverse.reshape(frames.shape)
    counts = np.stack([np.bincount(row, minlength=len(unique)) for row in inverse])
    alone = np.take_along_axis(counts, inverse, axis=1) == 1
    present = counts > (1 if singletons is not None else 0)
    slots = _colour_slots(present, counts, unique)
    table = _palette(palette, max(int(slots.max()) + 1, 1), singletons)
    rgba = table[np.maximum(slots, 0)[inverse]]
    if singletons is not None:
        rgba[alone] = matplotlib.colors.to_rgba(singletons)
    return rgba.reshape(*labels.shape, 4)


def _color_frames(
    colors, clusters, T: int, n: int, cmap: str, name: str, singletons=None
) -> Callable:
    """A function `i -> (n, 4)` RGBA of frame `i` from any accepted colour specification:
    None, a colour, `(n, 3|4)` or `(T, n, 3|4)` RGB(A), `(n,)` or `(T, n)` values (mapped
    through `cmap` with one norm for the whole trajectory), or cluster labels `clusters`."""
    if clusters is not None:
        clusters = np.asarray(clusters)
        if clusters.shape not in ((T, n), (n,)):
            raise ValueError(
                f"clusters must have shape (T, n) = {(T, n)} or (n,); got {clusters.shape}"
            )
        colors = cluster_colors(clusters, singletons=singletons)
    if colors is None:
        colors = "C0"
    if isinstance(colors, str) or (
        isinstance(colors, tuple) and len(colors) in (3, 4) and np.isscalar(colors[0])
    ):
        rgba = np.repeat(matplotlib.colors.to_rgba_array(colors), n, axis=0)
        return lambda i: rgba
    if (
        isinstance(colors, (list, tuple))
        and len(colors) == n
        and all(isinstance(c, str) for c in colors)
    ):
        rgba = matplotlib.colors.to_rgba_array(colors)
        return lambda i: rgba
    arr = np.asarray(colors, dtype=float)
    if arr.shape in ((n, 3), (n, 4)):
        rgba = matplotlib.colors.to_rgba_array(arr)
        return lambda i: rgba
    if arr.shape in ((T, n, 3), (T, n, 4)):
        if arr.shape[-1] == 3:
            arr = np.concatenate([arr, np.ones((T, n, 1))], axis=-1)
        return lambda i: arr[i]
    if arr.shape in ((n,), (T, n)):
        finite = arr[np.isfinite(arr)]
        norm = matplotlib.colors.Normalize(*(finite.min(), finite.max()) if finite.size else (0, 1))
        mapper = matplotlib.colormaps[cmap]
        if arr.ndim == 1:
            rgba = mapper(norm(arr))
            return lambda i: rgba
        return lambda i: mapper(norm(arr[i]))
    raise ValueError(
        f"{name} must be a colour, (n, 3|4) or (T, n, 3|4) RGBA, or (n,) or (T, n) values "
        f"with n = {n}, T = {T}; got shape {arr.shape}"
    )


# --------------------------------------------------------------------------- panels


class CloudPanel:
    """The tokens of one trajectory on one axis: points, optional fading trails, and for
    the sphere a translucent shade between the far and the near side. `update(i)` moves
    the artists in place; `artists` lists them in drawing order."""

    def __init__(self, ax, xs, geo: Geometry, color_of: Callable, *, view=VIEW, size=None, trail=0):
        self.ax, self.xs, self.geo, self.color_of, self.trail = ax, xs, geo, color_of, int(trail)
        n = xs.shape[1]
        size = size if size is not None else float(np.clip(900 / np.sqrt(n), 1.0, 24.0))
        _draw_background(ax, geo, view)
        self.flat = geo.screen(xs.reshape(-1, xs.shape[-1])).reshape(xs.shape[0], n, 2)
        depth = geo.depth(xs.reshape(-1, xs.shape[-1]))
        self.depth = None if depth is None else depth.reshape(xs.shape[0], n)
        if self.depth is not None:
            self.depth_scale = max(float(np.abs(self.depth).max()), 1e-12)
        self.artists = []
        empty = np.zeros((0, 2))
        if geo.kind == "sphere":
            self.back = ax.scatter(*empty.T, s=size, edgecolors="none", zorder=2)
            self.shade = ax.imshow(
                _sphere_shade(),
                extent=(-1, 1, -1, 1),
                origin="lower",
                zorder=3,
                interpolation="bilinear",
            )
            self.artists += [self.back, self.shade]
        if self.trail:
            # over the shade of the sphere (far segments are dimmed instead), under the tokens
            self.trails = LineCollection([], linewidths=max(0.5, size**0.5 / 4), zorder=3.8)
            ax.add_collection(self.trails, autolim=False)
            self.artists.append(self.trails)
        self.front = ax.scatter(*empty.T, s=size, edgecolors="none", zorder=4)
        self.artists.append(self.front)

    def update(self, i: int) -> None:
        rgba = np.array(self.color_of(i), dtype=float)
        flat = self.flat[i]
        if self.trail:
            self._update_trails(i, rgba)
        if self.geo.kind == "sphere":
            far = self.depth[i] < 0
            dim = rgba[far]
            dim[:, 3] *= _DIM
            self.back.set_offsets(flat[far])
            self.back.set_facecolors(dim)
            near = ~far
            order = np.argsort(self.depth[i][near], kind="stable")
            self.front.set_offsets(flat[near][order])
            self.front.set_facecolors(rgba[near][order])
        elif self.geo.kind == "space":
            order = np.argsort(self.depth[i], kind="stable")  # far first: near tokens on top
            shade = 0.5 + 0.5 * np.clip(self.depth[i][order] / self.depth_scale, -1, 1)
            rgba = rgba[order]
            rgba[:, 3] *= 0.35 + 0.65 * shade
            self.front.set_offsets(flat[order])
            self.front.set_facecolors(rgba)
        else:
            self.front.set_offsets(flat)
            self.front.set_facecolors(rgba)

    def _update_trails(self, i: int, rgba: np.ndarray) -> None:
        lo = max(0, i - self.trail)
        if i == lo:
            self.trails.set_segments([])
            return
        path = self.flat[lo : i + 1]  # (k + 1, n, 2)
        segments = np.stack([path[:-1], path[1:]], axis=2).reshape(-1, 2, 2)
        k = i - lo
        age = (np.arange(k) + 1 + (self.trail - k)) / (self.trail + 1)  # older -> fainter
        colors = np.repeat(rgba[None], k, axis=0)
        colors[..., 3] *= 0.6 * age[:, None]
        if self.geo.kind == "sphere":
            colors[..., 3] *= np.where(self.depth[lo + 1 : i + 1] < 0, _DIM, 1.0)
        # one polyline (segments separated by NaN) per distinct colour: Agg draws a few long
        # paths much faster than thousands of separately coloured segments
        colors = colors.reshape(-1, 4)
        unique, group = np.unique(colors, axis=0, return_inverse=True)
        order = np.argsort(group.ravel(), kind="stable")
        gap = np.full((len(segments), 1, 2), np.nan)
        pieces = np.concatenate([segments, gap], axis=1)[order]
        bounds = np.cumsum(np.bincount(group.ravel(), minlength=len(unique)))[:-1]
        self.trails.set_segments([p.reshape(-1, 2) for p in np.split(pieces, bounds)])
        self.trails.set_colors(unique)


def _pairwise_cosine_histograms(xs: np.ndarray, bins: int = _HIST_BINS) -> np.ndarray:
    """Density histograms `(T, bins)` on [-1, 1] of the cosines between distinct tokens
    (a fixed evenly spaced subset of at most 512 tokens when n is larger)."""
    T, n, _ = xs.shape
    keep = np.unique(np.linspace(0, n - 1, min(n, _HIST_TOKENS)).round().astype(int))
    u = xs[:, keep] / np.linalg.norm(xs[:, keep], axis=-1, keepdims=True)
    iu = np.triu_indices(len(keep), 1)
    edges = np.linspace(-1, 1, bins + 1)
    out = np.zeros((T, bins))
    for t in range(T):
        cos = np.clip((u[t] @ u[t].T)[iu], -1, 1)
        out[t] = np.histogram(cos, bins=edges, density=True)[0]
    return out


class CosinePanel:
    """Histogram of pairwise cosines of one trajectory, frame by frame."""

    def __init__(self, ax, xs):
        self.hist = _pairwise_cosine_histograms(xs)
        edges = np.linspace(-1, 1, self.hist.shape[1] + 1)
        self.stairs = ax.stairs(self.hist[0], edges, fill=True, alpha=0.7, color="C0")
        ax.set_xlim(-1, 1)
        ax.set_ylim(0, 1.05 * max(float(self.hist.max()), 1e-9))
        ax.set_xlabel(r"$\cos\angle(x_i, x_j)$")
        ax.set_title("pairwise cosines", fontsize=10)
        ax.grid(alpha=0.25)
        self.artists = [self.stairs]

    def update(self, i: int) -> None:
        self.stairs.set_data(self.hist[i])


class AttentionPanel:
    """The attention matrix of each frame as a heat map, rows and columns ordered by
    cluster (stable within a cluster) when labels are given."""

    def __init__(self, ax, matrices, clusters=None):
        self.matrices = np.asarray(matrices)
        if self.matrices.ndim != 3 or self.matrices.shape[1] != self.matrices.shape[2]:
            raise ValueError(f"attention must have shape (T, n, n); got {self.matrices.shape}")
        self.clusters = None if clusters is None else np.asarray(clusters)
        vmax = float(np.nanmax(self.matrices)) or 1.0
        self.image = ax.imshow(
            self.matrices[0],
            cmap="magma",
            vmin=0,
            vmax=vmax,
            interpolation="nearest",
            aspect="equal",
        )
        ax.set_title("attention", fontsize=10)
        ax.set_xlabel("key j (by cluster)" if clusters is not None else "key j")
        ax.set_ylabel("query i")
        ax.set_xticks([])
        ax.set_yticks([])
        self.artists = [self.image]

    def update(self, i: int) -> None:
        a = self.matrices[i]
        if self.clusters is not None:
            labels = self.clusters if self.clusters.ndim == 1 else self.clusters[i]
            order = np.argsort(labels, kind="stable")
            a = a[np.ix_(order, order)]
        self.image.set_data(a)


class MetricPanel:
    """One metric against time (one curve per trajectory) with a cursor at the frame."""

    def __init__(self, ax, ts, name, values, labels=None, time_label="time t", legend=True):
        values = np.asarray(values, dtype=float)
        rows = values.reshape(-1, len(ts))
        for j, row in enumerate(rows):
            label = labels[j] if labels is not None and len(rows) > 1 else None
            ax.plot(ts, row, lw=1.4, c=f"C{j}", label=label)
        if legend and labels is not None and len(rows) > 1:
            ax.legend(fontsize=7)
        # the panels of an animation are short: a rotated unit would squeeze them
        style_metric_axis(ax, name, fontsize=10, unit=False)
        if time_label:
            ax.set_xlabel(time_label)
        ax.grid(alpha=0.3, which="both")
        self.ts = ts
        self.cursor = ax.axvline(ts[0], c="C3", lw=1)
        self.artists = [self.cursor]

    def update(self, i: int) -> None:
        self.cursor.set_xdata([self.ts[i], self.ts[i]])


def _metric_rows(metrics, T: int, k: int) -> dict[str, np.ndarray]:
    out = {}
    for name, values in dict(metrics or {}).items():
        values = (
            np.asarray(values, dtype=float)
            if not isinstance(values, (list, tuple))
            else np.stack([np.asarray(v, dtype=float) for v in values])
        )
        if values.shape not in ((T,), (k, T)):
            raise ValueError(
                f"metrics[{name!r}] must have shape (T,) = ({T},) or (k, T) = ({k}, {T}); got {values.shape}"
            )
        out[name] = values
    return out


def _per_trajectory(value, k: int, several: bool) -> list:
    """`value` for each of `k` trajectories: a list or tuple of k values when several
    trajectories are drawn (other than one RGB(A) tuple), else the same value for all."""
    single_color = isinstance(value, tuple) and all(np.isscalar(v) for v in value)
    if several and isinstance(value, (list, tuple)) and len(value) == k and not single_color:
        return list(value)
    return [value] * k


class CloudScene(AbstractScene):
    """Particle clouds: one trajectory, or several side by side, with optional pairwise
    cosines, attention heat maps and metric curves with a cursor at the frame.

    Arguments are those of `particles.plot.animate` (which see).
    """

    def __init__(
        self,
        fig: Figure,
        ts,
        xs,
        *,
        labels=None,
        metrics=None,
        colors=None,
        clusters=None,
        singletons=None,
        cmap="viridis",
        trail=0,
        attention=None,
        view=VIEW,
        point_size=None,
        title="",
        time_label="t",
        time_format=".3g",
    ):
        self.ts = check_times(ts)
        trajectories, several = _as_trajectories(xs, self.ts)
        k, T = len(trajectories), len(self.ts)
        if labels is not None and (isinstance(labels, str) or len(labels) != k):
            raise ValueError(
                f"labels must be a list of {k} panel titles (one per trajectory); got {labels!r}"
            )
        metrics = _metric_rows(metrics, T, k)
        geo = geometry(trajectories, view=view)
        colors_k = _per_trajectory(colors, k, several)
        clusters_k = _per_trajectory(clusters, k, several)
        attention_k = _per_trajectory(attention, k, several)
        extras = (["cosines"] if geo.kind == "pca" else []) + (
            ["attention"] if attention is not None else []
        )
        self.fig = fig
        # layout: one trajectory -> a row [cloud, extras..., metrics column];
        # several -> a column per trajectory (cloud over its extras), metrics on the right
        cols = k + (1 if metrics else 0)
        if k == 1:
            widths = [1.25] + [1.0] * len(extras) + ([1.1] if metrics else [])
            grid = fig.add_gridspec(1, len(widths), width_ratios=widths)
            cells = [[grid[0, 0]] + [grid[0, 1 + e] for e in range(len(extras))]]
            metric_cell = grid[0, len(widths) - 1] if metrics else None
        else:
            heights = [1.25] + [0.8] * len(extras)
            grid = fig.add_gridspec(
                len(heights),
                cols,
                height_ratios=heights,
                width_ratios=[1.0] * k + ([1.1] if metrics else []),
            )
            cells = [[grid[r, j] for r in range(len(heights))] for j in range(k)]
            metric_cell = grid[:, k] if metrics else None
        self.panels = []
        self.cloud_axes = []
        for j, x in enumerate(trajectories):
            ax = fig.add_subplot(cells[j][0])
            color_of = _color_frames(
                colors_k[j], clusters_k[j], T, x.shape[1], cmap, "colors", singletons
            )
            self.panels.append(
                CloudPanel(ax, x, geo, color_of, view=view, size=point_size, trail=trail)
            )
            self.cloud_axes.append(ax)
            if labels is not None:
                ax.set_title(str(labels[j]), fontsize=11)
            for e, extra in enumerate(extras):
                e_ax = fig.add_subplot(cells[j][1 + e])
                if extra == "cosines":
                    self.panels.append(CosinePanel(e_ax, x))
                else:
                    A = np.asarray(attention_k[j])
                    if A.shape[:1] != (T,) or A.shape[1:] != (x.shape[1], x.shape[1]):
                        raise ValueError(
                            f"attention must have shape (T, n, n) = {(T, x.shape[1], x.shape[1])}; got {A.shape}"
                        )
                    self.panels.append(AttentionPanel(e_ax, A, clusters_k[j]))
        if metrics:
            # the panels share the time axis, labelled once at the bottom; spacing is left
            # to the layout engine (a gridspec hspace on top of it squeezes the panels flat)
            sub = metric_cell.subgridspec(len(metrics), 1)
            first = None
            for m, (name, values) in enumerate(metrics.items()):
                m_ax = fig.add_subplot(sub[m, 0], sharex=first)
                first = first or m_ax
                bottom = m == len(metrics) - 1
                self.panels.append(
                    MetricPanel(
                        m_ax,
                        self.ts,
                        name,
                        values,
                        labels,
                        (f"time {time_label}" if time_label == "t" else time_label)
                        if bottom
                        else None,
                        legend=m == 0,
                    )
                )
                if not bottom:
                    m_ax.tick_params(labelbottom=False)
        self.time = TimeLabel(self.cloud_axes, self.ts, time_label, time_format)
        if title:
            suptitle(fig, title)
        self.dynamic = [a for p in self.panels for a in p.artists] + self.time.texts

    def update(self, i: int) -> None:
        for p in self.panels:
            p.update(i)
        self.time.update(i)

    @classmethod
    def default_size(cls, ts, xs, *, metrics=None, attention=None, **options):
        trajectories, _ = _as_trajectories(xs)
        k = len(trajectories)
        extras = int(trajectories[0].shape[-1] > 3) + int(attention is not None)
        has_metrics = bool(metrics)
        if k == 1:
            return (4.2 + 3.4 * extras + 3.6 * has_metrics, 4.2)
        return (3.8 * k + 3.6 * has_metrics, 4.0 + 2.6 * extras)


def frame(
    ts,
    xs,
    index: int = -1,
    *,
    size: tuple[float, float] | None = None,
    dpi: int = 100,
    **options,
) -> Figure:
    """One frame of `animate` as a static figure (same panels and options), at saved time
    `index` (default: the final state). Returns the pyplot figure."""
    fig = plt.figure(
        figsize=size or CloudScene.default_size(ts, xs, **options),
        dpi=dpi,
        layout="constrained",
    )
    scene = CloudScene(fig, ts, xs, **options)
    scene.update(range(len(scene.ts))[index])
    return fig


def final_state(ts, xs, **options) -> Figure:
    """The last frame of a trajectory (or of several side by side): `frame(ts, xs, -1)`."""
    return frame(ts, xs, -1, **options)


def snapshots(
    ts,
    xs,
    indices: Sequence[int] | None = None,
    *,
    colors=None,
    clusters=None,
    singletons=None,
    cmap: str = "viridis",
    columns: int | None = None,
    time_label: str = "t",
    view=VIEW,
    point_size=None,
    fig: Figure | None = None,
) -> Figure:
    """A grid of panels showing the cloud at several saved times (default: 5, evenly
    spaced), all in the same view and limits. `columns` panels per row (default: all)."""
    ts = np.asarray(ts, dtype=float)
    (x,), _ = _as_trajectories(np.asarray(xs), ts)
    if indices is None:
        indices = np.unique(np.linspace(0, len(ts) - 1, min(5, len(ts))).round().astype(int))
    indices = [range(len(ts))[i] for i in indices]
    columns = columns or len(indices)
    rows = -(-len(indices) // columns)
    fig = fig or plt.figure(figsize=(3 * columns, 3.1 * rows), layout="constrained")
    geo = geometry(x, view=view)
    color_of = _color_frames(colors, clusters, len(ts), x.shape[1], cmap, "colors", singletons)
    grid = fig.add_gridspec(rows, columns)
    for k, i in enumerate(indices):
        ax = fig.add_subplot(grid[k // columns, k % columns])
        panel = CloudPanel(ax, x, geo, color_of, view=view, size=point_size)
        panel.update(i)
        ax.set_title(f"{time_label} = {ts[i]:.3g}", fontsize=10)
    return fig


def metric_curves(ts, metrics: Mapping[str, np.ndarray], *, axes=None, time_label: str = "time t"):
    """One panel per metric time series (`(T,)`, or `(k, T)` for k curves), sharing the
    time axis. Panels are titled in words (`particles.plot.metric_label`), and known counts
    drawn on a log axis. Returns the axes."""
    names = list(metrics)
    if not names:
        raise ValueError("metrics is empty: nothing to plot")
    if axes is None:
        fig, axes = plt.subplots(
            1, len(names), figsize=(3.6 * len(names), 3), squeeze=False, layout="constrained"
        )
        axes = axes[0]
    ts = np.asarray(ts, dtype=float)
    for ax, name in zip(axes, names, strict=True):
        values = np.asarray(metrics[name], dtype=float)
        if values.shape[-1] != len(ts):
            raise ValueError(
                f"metrics[{name!r}] has {values.shape[-1]} values but ts has {len(ts)} times"
            )
        for j, row in enumerate(values.reshape(-1, len(ts))):
            ax.plot(ts, row, lw=1.5, c=f"C{j}")
        ax.set_xlabel(time_label)
        style_metric_axis(ax, name)
        ax.grid(alpha=0.3, which="both")
    return axes


def summary_figure(
    ts,
    xs,
    metrics: Mapping[str, np.ndarray],
    *,
    colors=None,
    clusters=None,
    singletons=None,
    title: str = "",
    view=VIEW,
) -> Figure:
    """Snapshots of the cloud (top row) above the metric curves (bottom row)."""
    ts = np.asarray(ts, dtype=float)
    indices = np.unique(np.linspace(0, len(ts) - 1, min(5, len(ts))).round().astype(int))
    cols = max(len(indices), len(metrics))
    fig = plt.figure(figsize=(3.2 * cols, 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    snapshots(
        ts, xs, indices, colors=colors, clusters=clusters, singletons=singletons, view=view, fig=top
    )
    if metrics:
        axes = bottom.subplots(1, len(metrics), squeeze=False)[0]
        metric_curves(ts, metrics, axes=axes)
    if title:
        suptitle(fig, title)
    return fig


def velocity_field(
    points,
    vectors,
    *,
    cloud=None,
    stream: bool = False,
    ax=None,
    view=VIEW,
    colors=None,
    title: str = "",
):
    """Quiver (or stream) plot of a velocity field given at `points (m, d)` by `vectors
    (m, d)`, e.g. from `AttentionFlow.field(points, cloud)`; the field is never recomputed.

    d = 2: arrows at the points (`stream=True` needs the points to be a full regular grid,
    as from `np.meshgrid`, and draws streamlines). d = 3 on the sphere: arrows of the
    tangent field seen by the camera, dimmed on the far side. `cloud (n, d)` is drawn on
    top. Returns the axis.
    """
    points, vectors = np.asarray(points, dtype=float), np.asarray(vectors, dtype=float)
    if points.ndim != 2 or vectors.shape != points.shape:
        raise ValueError(
            f"points and vectors must both have shape (m, d); got {points.shape} and {vectors.shape}"
        )
    d = points.shape[1]
    if d not in (2, 3):
        raise ValueError(f"velocity fields are drawn for d = 2 or 3; got d = {d}")
    everything = (
        points if cloud is None else np.concatenate([points, np.asarray(cloud, dtype=float)])
    )
    geo = geometry(everything[None], view=view)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    _draw_background(ax, geo, view)
    flat = geo.screen(points)
    arrows = vectors @ geo.basis
    speed = np.linalg.norm(vectors, axis=1)
    if stream:
        if d != 2:
            raise ValueError("stream=True draws d = 2 fields on a regular grid")
        xu, yu = np.unique(points[:, 0]), np.unique(points[:, 1])
        if len(xu) * len(yu) != len(points):
            raise ValueError("stream=True needs points on a full regular grid (np.meshgrid)")
        order = np.lexsort((points[:, 0], points[:, 1]))
        U = vectors[order, 0].reshape(len(yu), len(xu))
        V = vectors[order, 1].reshape(len(yu), len(xu))
        ax.streamplot(
            xu,
            yu,
            U,
            V,
            color=speed[order].reshape(len(yu), len(xu)),
            cmap="viridis",
            density=1.2,
            linewidth=0.8,
        )
    else:
        alpha = np.ones(len(points))
        if geo.kind == "sphere":
            alpha = np.where(geo.depth(points) < 0, _DIM, 1.0)
        rgba = matplotlib.colormaps["viridis"](
            matplotlib.colors.Normalize(0, max(speed.max(), 1e-12))(speed)
        )
        rgba[:, 3] = alpha
        ax.quiver(
            *flat.T,
            *arrows.T,
            color=rgba,
            angles="xy",
            scale_units="xy",
            scale=None,
            width=0.004,
            zorder=5,
        )
    if cloud is not None:
        x = np.asarray(cloud, dtype=float)[None]
        panel = CloudPanel(
            ax,
            x,
            geo,
            _color_frames(
                colors if colors is not None else "C3", None, 1, x.shape[1], "viridis", "colors"
            ),
            view=view,
        )
        panel.update(0)
    if title:
        ax.set_title(title)
        fit_title(ax.title)
    return ax


def draw_cloud(ax, x, colors=None, size: float = 8.0, sphere: bool | None = None, view=VIEW):
    """Scatter one cloud `(n, d)` on `ax` in the view of its kind (see the module notes).

    On a 3D (`mplot3d`) axis, d = 3 clouds are scattered in 3D, the far side of the sphere
    dimmed. Returns the artist(s).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"x must be a cloud (n, d); got shape {x.shape}")
    if getattr(ax, "name", "") == "3d":
        if x.shape[1] != 3:
            raise ValueError(f"a 3D axis draws d = 3 clouds; got d = {x.shape[1]}")
        rgba = _color_frames(colors, None, 1, len(x), "viridis", "colors")(0).copy()
        if sphere if sphere is not None else _is_on_sphere(x):
            elev, azim = np.deg2rad(ax.elev), np.deg2rad(ax.azim)
            toward = np.array(
                [np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)]
            )
            rgba[:, 3] *= np.where(x @ toward >= 0, 1.0, _DIM)
        return ax.scatter(*x.T, s=size, c=rgba, depthshade=False, edgecolors="none")
    geo = geometry(x[None], view=view, sphere=sphere)
    panel = CloudPanel(
        ax,
        x[None],
        geo,
        _color_frames(colors, None, 1, len(x), "viridis", "colors"),
        view=view,
        size=size,
    )
    panel.update(0)
    return panel.artists
