"""The memory planner: predict each plan's peak GPU memory and speed before running it, and pick the
fastest plan that fits, instead of climbing the card ladder one OOM at a time.

- planning.py: the one entry point, `Planner` (used by the supervisor and `tamer plan`).
- estimate.py: peak memory per phase by arithmetic (no torch), from the architecture and the plan.
- speed.py: expected relative throughput, calibrated on bench/results/anchors-h100-2026-11-25.md.
- candidates.py: the plans a policy allows, and `choose()`, steered by past OOMs.
- calibrate.py: measured vs predicted peaks of past attempts, and the correction they imply.

`tamer plan` (tamer/cli/commands_plan.py) prints the candidates and the choice; shape.py reads a model's shape,
world.py compares several GPUs with one.
"""

from tamer.planner.calibrate import Observation, correction_factor, observations
from tamer.planner.candidates import (
    Candidate,
    Choice,
    PlannerPolicy,
    assess,
    best,
    candidate_plans,
    choose,
    device_budget,
    plan_key,
)
from tamer.planner.estimate import CUDA_CONTEXT_BYTES, Estimate, ModelShape, Workload, estimate
from tamer.planner.speed import relative_speed

__all__ = [
    "CUDA_CONTEXT_BYTES",
    "Candidate",
    "Choice",
    "Estimate",
    "ModelShape",
    "Observation",
    "PlannerPolicy",
    "Workload",
    "assess",
    "best",
    "candidate_plans",
    "choose",
    "correction_factor",
    "device_budget",
    "estimate",
    "observations",
    "plan_key",
    "relative_speed",
]
