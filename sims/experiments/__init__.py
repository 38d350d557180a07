"""Experiments: each module registers one or more with `sims.experiment`."""
