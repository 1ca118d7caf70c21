"""What the child process runs: its entry point (child.py), the torchrun launcher, data order, model building,
loss, memory readings, the training loop. The only part of tamer that imports torch."""
