"""The supervisor and the child it runs: spawn, watch, classify each exit, and train."""
