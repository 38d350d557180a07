"""`--quick`: for every experiment, parameters that finish in under 30 s on 2 CPU cores.

These are for trying an experiment out and for CI (every experiment runs at `--quick` in an
environment holding only the runtime install); the numbers they give are rough. Flags given
with `--quick` override these values. A new experiment adds its entry here; a test checks
that every registered experiment has one and that each finishes in time.
"""

from __future__ import annotations

QUICK: dict[str, dict] = {
    "causal": dict(n=8, betas=(1.0,), t1=20.0, frames=11),
    "clustering": dict(n=8, betas=(1.0,), random_qkv=0, t1=10.0, frames=11),
    "deep-limit": dict(
        n=6,
        variants=("residual",),
        min_depth=8,
        max_depth=32,
        depth_for_profile=8,
        collapse_depths=(8, 16),
        shallow_depth=8,
        animated="residual",
    ),
    "lipschitz": dict(
        n_max=4,
        n_points=2,
        trials=1,
        fit_n_max=4,
        search_n_max=2,
        search_steps=2,
        radius_points=2,
        radius_min=1.0,
        radius_max=4.0,
        radius_n=3,
    ),
    "mean-field": dict(
        frames=5,
        min_log2_n=4,
        max_log2_n=5,
        seeds=2,
        reference=256,
        exact_reference=128,
        exact_max_n=32,
        animation_n=32,
        stability_n=8,
        causal_max_log2_n=5,
    ),
    "mean-field-circle": dict(
        cells=32, n=64, min_log2_n=4, max_log2_n=5, seeds=1, frames=3, t1=0.5
    ),
    "metastability": dict(n=8, dims=(2,), betas=(9.0,), t1=50.0, frames=11),
    "misspecified": dict(n=12, frames=5, t1=0.5, sweep_points=2),
    "phase-diagram": dict(
        n=6, runs=4, num_betas=2, t1=20.0, frames=11, normalizations=("softmax",)
    ),
    "polytope": dict(n=8, t1=4.0, frames=11),
    "pretrained-flow": dict(max_tokens=10, sub_steps=2, depth=20, every=2),
    "pretrained-lipschitz": dict(
        n_min=2, n_max=2, layers=(0,), fit_n_max=2, plateau_n_min=2, max_iters=50
    ),
    "sphere-clustering": dict(n=32, t1=10.0, frames=21),
    "variants": dict(n=8, t1=6.0, frames=7),
}
