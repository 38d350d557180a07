r"""Every device of a machine, and many machines: ensembles and large clouds with
`jax.sharding`.

Two kinds of work outgrow one device, and each is split where it is independent:

- **Ensembles** (phase diagrams, seeds $\times$ betas, chaos and stability studies): members
  never interact, so the member axis is split over a one-dimensional `Mesh` and every
  device runs its own batched adaptive loop on its block (`ensemble`, a `shard_map`). A
  device's loop stops when its own slowest member is done, and no device waits on another
  between steps.
- **One large cloud**: the field $v[\mu](x_i) = \sum_j w_j k(x_i, x_j) V x_j /
  \sum_j w_j k(x_i, x_j)$ is a reduction over keys $j$ for each query $i$, so the queries
  are split over the devices and the keys gathered (`field`, `ShardedFlow`): each device
  holds all $n$ keys ($n d$ numbers) but only its own $n / D$ rows of kernel tiles, and the
  field comes back split the same way as the tokens.

Sizes not divisible by the device count $D$ are padded. An ensemble is padded with copies of
its last member (dropped from the result). A cloud is padded with tokens of weight zero,
which remove themselves exactly from every sum over keys: $\sum_j w_j k(x, x_j) V x_j$ and
$\sum_j w_j k(x, x_j)$ do not change when a token of weight $0$ is added (`pad`).

Meshes are built with `AxisType.Auto`: `jax.make_mesh` makes Explicit axes by default, and
diffrax's solver loop does not trace under them. Many machines join through `initialize`
(SLURM, or an explicit coordinator), after which `make_mesh("all")` spans every device of
every process; each process computes its share and gets the ensemble's results whole.

The library uses one device unless asked: pass `devices=` to a study, or set a default for
a block of code with `with particles.devices.use("all"):` (what `python -m sims run
--devices` does).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from .attention import AbstractAttention
from .flows import AbstractFlow, FeedForward, Layered
from .spaces import AbstractSpace

__all__ = [
    "AXIS",
    "Devices",
    "ShardedFlow",
    "count",
    "ensemble",
    "field",
    "initialize",
    "make_mesh",
    "pad",
    "platform",
    "process_count",
    "process_index",
    "resolve",
    "use",
]

AXIS = "devices"
"""The name of the one mesh axis that members or query tokens are split over."""

Devices = int | str | Sequence[jax.Device] | Mesh | None
"""How many devices: `None` (the default set by `use`; one device outside it), `"all"`
(every device of every process), an int `N` (the first `N` devices), a list of devices, or
a one-axis `Mesh`."""

_DEFAULT: contextvars.ContextVar[Devices] = contextvars.ContextVar("devices", default=1)


def initialize(
    coordinator: str | None = None,
    *,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> int:
    """Join a multi-process run through `jax.distributed.initialize`; return the process
    count.

    Call it before anything touches a device. With `coordinator` (`"host:port"` of process
    0), `num_processes` and `process_id` are needed too, unless JAX can detect them. Without
    it, a run started by SLURM's `srun` with more than one task (`SLURM_STEP_NODELIST` set,
    `SLURM_STEP_NUM_TASKS > 1`), or with `JAX_COORDINATOR_ADDRESS` in the environment, is initialized
    from the environment (JAX's own cluster detection); anything else is one process and
    nothing happens. Calling it again is harmless.

    Raises:
        ValueError: `num_processes` or `process_id` without a coordinator.
    """
    if jax.distributed.is_initialized():
        return jax.process_count()
    from_environment = os.environ.get("JAX_COORDINATOR_ADDRESS") or _slurm_tasks() > 1
    if coordinator is None and not from_environment:
        if num_processes is not None or process_id is not None:
            raise ValueError(
                "num_processes and process_id need a coordinator address (host:port of process 0)"
            )
        return 1
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return jax.process_count()


def _slurm_tasks() -> int:
    """Tasks of the `srun` job step this process belongs to (0 outside one). Only `srun`
    sets `SLURM_STEP_NUM_TASKS` per step: a plain `python` in a batch script of a many-task
    job (`SLURM_NTASKS > 1`) is one process and must not wait for the others."""
    if "SLURM_JOB_ID" not in os.environ or "SLURM_STEP_NODELIST" not in os.environ:
        return 0
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", 0))
    except ValueError:
        return 0


def make_mesh(devices: int | str | Sequence[jax.Device] = "all") -> Mesh:
    """A one-axis mesh (axis `AXIS`, `AxisType.Auto`) over `devices`.

    Args:
        devices: `"all"` (every device of every process), an int `N >= 1` (the first `N`
            of `jax.devices()`; all of them when several processes run) or a list of devices.

    Raises:
        ValueError: an unknown string, a count out of range, an empty list, or, with several
            processes, a mesh that leaves some process's devices out (every process must
            take part in every computation).
    """
    every = jax.devices()
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be 'all', a positive int or a list; got {devices!r}")
        chosen = every
    elif isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        if not 1 <= devices <= len(every):
            raise ValueError(
                f"devices must be between 1 and {len(every)} (the devices JAX sees: "
                f"{len(every)} {every[0].platform}); got {devices}"
            )
        chosen = every[: int(devices)]
    else:
        chosen = list(devices)
        if not chosen or not all(isinstance(x, jax.Device) for x in chosen):
            raise ValueError(f"devices must be 'all', a positive int or a list; got {devices!r}")
    if jax.process_count() > 1 and len(chosen) != len(every):
        raise ValueError(
            f"with {jax.process_count()} processes every device takes part: devices must be "
            f"'all' or {len(every)}; got {len(chosen)}"
        )
    return jax.make_mesh((len(chosen),), (AXIS,), axis_types=(AxisType.Auto,), devices=chosen)


def resolve(devices: Devices = None) -> Mesh | None:
    """The mesh that `devices` means, or `None` for one device (the plain, unsharded path).

    `None` is the default of the innermost `use` block (one device outside any).
    """
    if devices is None:
        devices = _DEFAULT.get()
    if isinstance(devices, int | np.integer) and not isinstance(devices, bool) and devices == 1:
        # one device: every process computes the same thing on its own first device
        return None
    if isinstance(devices, Mesh):
        if devices.axis_names != (AXIS,):
            raise ValueError(f"a mesh for devices= needs the one axis {AXIS!r}; got {devices}")
        mesh = devices
    else:
        mesh = make_mesh(devices)
    return None if mesh.size == 1 else mesh


def count(devices: Devices = None) -> int:
    """How many devices `devices` means (1 for the plain path)."""
    mesh = resolve(devices)
    return 1 if mesh is None else mesh.size


def process_index() -> int:
    """This process's index in a multi-process run (0 alone): process 0 writes the files."""
    return jax.process_index()


def process_count() -> int:
    """How many processes take part (1 unless `initialize` joined a multi-process run)."""
    return jax.process_count()


def platform() -> str:
    """The platform of JAX's default devices: `"cpu"`, `"gpu"` or `"tpu"`."""
    return jax.devices()[0].platform


@contextlib.contextmanager
def use(devices: Devices) -> Iterator[None]:
    """Within the block, `devices=None` (every study's default) means `devices`.

    with particles.devices.use("all"):
        particles.studies.phase_diagram(key, betas, ts)  # over every device
    """
    resolve(devices)  # a bad value fails here, not inside the first study
    token = _DEFAULT.set(devices)
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def _pad_axis(a: Array, axis: int, size: int) -> Array:
    """`a` extended to `size` along `axis` by repeating its last entry."""
    index = jnp.minimum(jnp.arange(size), a.shape[axis] - 1)
    return jnp.take(a, index, axis=axis)


def _placed(a, sharding: NamedSharding):
    """`a` laid out as `sharding`: a global array when several processes run (every process
    holds the same host values, as a run seeded by the same key does)."""
    if isinstance(a, jax.core.Tracer):
        return a
    if jax.process_count() > 1:
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.device_put(a, sharding)


def ensemble(
    fn: Callable,
    devices: Devices = None,
    *,
    in_axes: int | None | Sequence[int | None] = 0,
    out_axes: int | Sequence[int] = 0,
) -> Callable:
    r"""`fn` over a member axis split across devices: `ensemble(fn, mesh)(*args) == fn(*args)`.

    `fn` takes arrays and already handles a whole block of members (a `vmap`-ed function);
    each device runs it on its block of the member axis (`in_axes`: the axis of each
    argument, `None` for one that every member shares), and the blocks of every output are
    joined along `out_axes`. The member count $m$ is padded to a multiple of the device
    count with copies of the last member, dropped from the result. Members never
    communicate, so each device's adaptive loop runs only as long as its own slowest
    member. Static options are closed over (`functools.partial`).

    With one device (`resolve(devices) is None`) this is `fn` itself. With several processes,
    every process passes the same arguments and gets every output whole (replicated).
    """
    mesh = resolve(devices)
    if mesh is None:
        return fn

    def call(*args):
        axes = (in_axes,) * len(args) if not isinstance(in_axes, Sequence) else tuple(in_axes)
        if len(axes) != len(args):
            raise ValueError(f"in_axes has {len(axes)} entries for {len(args)} arguments")
        sizes = {jnp.shape(a)[ax] for a, ax in zip(args, axes, strict=True) if ax is not None}
        if len(sizes) != 1:
            raise ValueError(f"the member axes of the arguments differ or are missing: {sizes}")
        members = sizes.pop()
        padded = -(-members // mesh.size) * mesh.size
        specs, placed = [], []
        replicated = NamedSharding(mesh, P())

        def shared(b):
            return _placed(b, replicated) if eqx.is_array(b) else b

        for a, ax in zip(args, axes, strict=True):
            if ax is None:  # any pytree that every member shares
                specs.append(P())
                placed.append(jax.tree.map(shared, a))
                continue
            spec = P(*([None] * ax), AXIS)
            specs.append(spec)
            placed.append(_placed(_pad_axis(jnp.asarray(a), ax, padded), NamedSharding(mesh, spec)))
        out = _sharded_call(_cacheable(fn), mesh, tuple(specs), out_axes, tuple(placed))
        outs = jax.tree.leaves(out)
        oaxes = (out_axes,) * len(outs) if isinstance(out_axes, int) else tuple(out_axes)
        cut = [
            jax.lax.slice_in_dim(o, 0, members, axis=ax) for o, ax in zip(outs, oaxes, strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(out), cut)

    return call


def _cacheable(fn: Callable) -> Callable:
    """`fn` as a key the compilation cache recognises again: a `functools.partial` made
    anew on every call (as the studies make theirs) hashes by identity, the same function
    with equal options as a pytree (`jax.tree_util.Partial`) does not."""
    if isinstance(fn, functools.partial):
        return jax.tree_util.Partial(fn.func, *fn.args, **fn.keywords)
    return fn


@eqx.filter_jit
def _sharded_call(fn, mesh, specs, out_axes, args):
    def spec(ax):
        return P(*([None] * ax), AXIS)

    out_specs = spec(out_axes) if isinstance(out_axes, int) else tuple(map(spec, out_axes))
    # only arrays cross into shard_map; the rest of a shared pytree (python numbers, static
    # options) is put back inside
    dynamic, static = eqx.partition(args, eqx.is_array)

    def block(dynamic):
        return fn(*eqx.combine(dynamic, static))

    # check_vma=False: diffrax's loops and equinox's error checks mix per-device values with
    # constants, which the varying-axis type check refuses; members are independent anyway
    out = jax.shard_map(block, mesh=mesh, in_specs=(specs,), out_specs=out_specs, check_vma=False)(
        dynamic
    )
    if jax.process_count() > 1:  # every process reads every result (process 0 writes them)
        out = jax.lax.with_sharding_constraint(out, NamedSharding(mesh, P()))
    return out


def pad(
    x: Float[Array, "n d"], weights: Float[Array, " n"] | None, multiple: int
) -> tuple[Float[Array, "m d"], Float[Array, " m"]]:
    r"""The cloud with tokens of weight zero added until $n$ is a multiple of `multiple`.

    The empirical measure $\mu = \sum_j w_j \delta_{x_j}$ is unchanged, so every attention
    field $v[\mu]$ is too: a weight-zero key adds nothing to either sum of
    $\sum_j w_j k(x, x_j) V x_j / \sum_j w_j k(x, x_j)$. The added tokens are copies of the
    last token (finite, on the sphere if the cloud is), and move as tracers of the field.

    Returns:
        `(x, weights)` of length $m = \lceil n / \text{multiple} \rceil \cdot \text{multiple}$;
        `weights` explicit (uniform $1/n$ on the real tokens when `None` was given).
    """
    n = x.shape[0]
    if weights is None:
        weights = jnp.full((n,), 1 / n, x.dtype)
    m = -(-n // multiple) * multiple
    if m == n:
        return x, weights
    zeros = jnp.zeros((m - n,), weights.dtype)
    return _pad_axis(x, 0, m), jnp.concatenate([weights, zeros])


class ShardedFlow(AbstractFlow):
    r"""A flow whose field is computed with the query tokens split over devices.

    $v[\mu](x_i)$ for the $n / D$ queries $x_i$ of each device, against all $n$ keys
    gathered from the others (`jax.lax.all_gather`): no device forms more than its own rows
    of kernel tiles, and the velocity comes back split like the tokens, so `simulate` keeps
    the whole solve sharded. Equal to `flow` to rounding (the same blocked reduction, rows
    evaluated on another device).

    The token count must be a multiple of the device count: `pad` adds weight-zero tokens.
    Causal attention and Sinkhorn need every query on one device (a row's mask position, a
    column normalization over all queries) and are refused, as in cross-attention.

    Args:
        flow: the flow to evaluate (`AttentionFlow`, `PreNormFlow`).
        mesh: a one-axis mesh from `make_mesh` (or `resolve`).
    """

    flow: AbstractFlow
    # the mesh's devices, static (a Mesh itself is not a field equinox accepts)
    devices: tuple[jax.Device, ...] = eqx.field(static=True)
    # the wrapped flow's parts, as AbstractFlow declares them (the same arrays as `flow`'s)
    attention: AbstractAttention | Layered
    space: AbstractSpace
    feedforward: FeedForward | None

    def __init__(self, flow: AbstractFlow, mesh: Mesh):
        if not isinstance(flow, AbstractFlow):
            raise TypeError(f"flow must be an AbstractFlow; got {type(flow).__name__}")
        if not isinstance(mesh, Mesh) or mesh.axis_names != (AXIS,):
            raise ValueError(f"mesh must be a one-axis mesh named {AXIS!r}; use make_mesh")
        self.flow = flow
        self.devices = tuple(mesh.devices.flat)
        self.attention = flow.attention
        self.space = flow.space
        self.feedforward = flow.feedforward

    @property
    def mesh(self) -> Mesh:
        return jax.make_mesh(
            (len(self.devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=self.devices
        )

    def read(self, x):
        return self.flow.read(x)

    def project(self, x, v):
        return self.flow.project(x, v)

    def __call__(self, t, x, weights=None):
        n = x.shape[0]
        if n % self.mesh.size:
            raise ValueError(
                f"a sharded cloud needs a multiple of {self.mesh.size} tokens; got n = {n} "
                "(particles.devices.pad adds tokens of weight zero)"
            )
        if weights is None:
            weights = jnp.full((n,), 1 / n, x.dtype)
        tokens = NamedSharding(self.mesh, P(AXIS))
        x = jax.lax.with_sharding_constraint(x, tokens)
        weights = jax.lax.with_sharding_constraint(weights, tokens)
        flow = self.flow

        def rows(t, queries, w):
            keys = jax.lax.all_gather(queries, AXIS, tiled=True)
            w = jax.lax.all_gather(w, AXIS, tiled=True)
            return flow.field(queries, keys, w, t)

        return jax.shard_map(
            rows,
            mesh=self.mesh,
            in_specs=(P(), P(AXIS), P(AXIS)),
            out_specs=P(AXIS),
            check_vma=False,
        )(jnp.asarray(t, x.dtype), x, weights)


def field(
    flow: AbstractFlow,
    x: Float[Array, "n d"],
    weights: Float[Array, " n"] | None = None,
    *,
    devices: Devices = "all",
    t: float = 0.0,
) -> Float[Array, "n d"]:
    r"""`flow(t, x, weights)` with the query tokens split over `devices`.

    Pads $n$ to a multiple of the device count with weight-zero tokens (`pad`), evaluates
    `ShardedFlow`, and drops the padding. The result is laid out as `x` was: a cloud sharded
    by tokens gives a field sharded the same way. Jitted; with one device it is `flow` itself.

    $$ v[\mu](x_i) = \frac{\sum_j w_j e^{s_\beta(Q x_i, K x_j)} V x_j}
       {\sum_j w_j e^{s_\beta(Q x_i, K x_j)}} $$

    (softmax; the other normalizations likewise), each device computing its own $i$.
    With several processes the field is a global array split over all of them
    (`jax.experimental.multihost_utils.process_allgather` reads it whole).
    """
    mesh = resolve(devices)
    if mesh is None:
        return flow(t, x, weights)
    if jax.process_count() > 1:  # global arrays: every process holds the same cloud
        replicated = NamedSharding(mesh, P())
        x = _placed(x, replicated)
        weights = None if weights is None else _placed(weights, replicated)
        return _field(flow, x, weights, jnp.asarray(t), mesh)
    out = _field(flow, x, weights, jnp.asarray(t), mesh)
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding) and out.sharding != sharding:
        out = jax.device_put(out, sharding)
    return out


@eqx.filter_jit
def _field(flow, x, weights, t, mesh):
    n = x.shape[0]
    xp, wp = pad(x, weights, mesh.size)
    return ShardedFlow(flow, mesh)(t, xp, wp)[:n]
