"""Helpers for tests and benchmarks, not for users' runs: a freshly initialised
all-in-one experiment (``toy_experiment``) and running ESPnet's trainer on tiny
data in-process (``espnet_run``)."""
