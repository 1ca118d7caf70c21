"""Trackers the supervisor mirrors a run into: TensorBoard event files, MLflow, Weights & Biases.

records.py turns database rows into metric names and texts (pure); base.py is the interface every tracker
implements, the check that a configured one is installed, and `open_tracker`; one module per tracker. The
training child never sees any of them: tamer/daemon/mirror.py reads what the database holds and forwards it.
"""
