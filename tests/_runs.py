"""What the default experiment writes, shared by the command-line tests."""

# a run of sphere-clustering small enough for a test (seconds)
SMALL = ["--n", "12", "--t1", "2", "--frames", "4"]
# the files a run of sphere-clustering writes, animation included
RUN_FILES = frozenset(
    {
        "config.json",
        "metrics.json",
        "trajectory.npz",
        "figure.png",
        "final_state.png",
        "animation.mp4",
    }
)
