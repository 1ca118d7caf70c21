"""The supervisor side: spawn the child (tamer/engine/child.py), watch it, classify each exit, choose the next plan.

Nothing here imports torch or tamer.engine (tests/unit/test_architecture.py); the contract with the child is tamer/protocol.py.
"""
