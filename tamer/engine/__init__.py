"""What the child process runs: data order, model building, loss, memory readings, the training loop."""
