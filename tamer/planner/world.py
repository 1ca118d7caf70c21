"""What several processes buy for one optimizer step: the compute shared out, plus the gradient all-reduce.

    compare_with_one_gpu(config, facts, budget, policy, workload, chosen) -> WorldSizeNote | None

The relative speeds of tamer/planner/speed.py are per process; with N processes each computes 1/N of the
step's tokens, and then every gradient crosses the interconnect (a ring all-reduce sends 2(N-1)/N of
the gradient bytes; FSDP's reduce-scatter and all-gathers move about as much). `tamer plan` and the
supervisor's planner event say when N GPUs are predicted slower than one for the configured batch, and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tamer.plan import DeviceFacts, Plan
from tamer.planner.candidates import choose
from tamer.planner.estimate import GIB, ModelShape, Workload, estimate
from tamer.planner.speed import ANCHOR_TOKENS_PER_SECOND

ALLREDUCE_BYTES_PER_SECOND = 32e9
"""Effective gradient all-reduce rate between two GPUs of one host. From the one measurement we have (two
H200s, 2026-11-26, issue 16): the 2-GPU full fine-tune (1B shape, 8 x 512 per step, DDP, fp32
gradients, 4.9 GB) took 0.253 s per step against 0.155 s on one GPU; this model predicts ~0.10 s of
compute per process, which leaves ~0.15 s for 4.9 GB all-reduced, ~32 GB/s (checkpointing leaves little
backward to overlap the buckets with)."""


def gradient_bytes(shape: ModelShape, plan: Plan, workload: Workload) -> int:
    """Bytes of the gradients one optimizer step reduces across processes (all of them, unsharded)."""
    alone = dataclasses.replace(plan, world_size=1, parallel="ddp")
    return estimate(shape, alone, workload).phases["optimizer"].components.get("gradients", 0)


def step_seconds(
    plan: Plan, speed: float, shape: ModelShape, workload: Workload, sequences_per_step: int
) -> tuple[float, float]:
    """(compute, communication) seconds of one optimizer step of `plan` at relative speed `speed`."""
    per_sequence = workload.computed_per_sequence or workload.sequence_length
    compute = sequences_per_step / plan.world_size * per_sequence / (speed * ANCHOR_TOKENS_PER_SECOND)
    world = plan.world_size
    communication = (
        2 * (world - 1) / world * gradient_bytes(shape, plan, workload) / ALLREDUCE_BYTES_PER_SECOND
        if world > 1
        else 0.0
    )
    return compute, communication


@dataclass(frozen=True)
class WorldSizeNote:
    """N processes against one, per optimizer step, as predicted."""

    world_size: int
    compute: float
    communication: float
    gradients: int
    single_plan: Plan | None
    single_seconds: float | None

    @property
    def seconds(self) -> float:
        return self.compute + self.communication

    @property
    def slower(self) -> bool:
        return self.single_seconds is not None and self.single_seconds < self.seconds

    def text(self, sequences_per_step: int) -> str:
        ours = (
            f"{self.world_size} processes: predicted {self.seconds:.2f} s per optimizer step ({self.compute:.2f} s compute "
            f"per process + {self.communication:.2f} s all-reducing {self.gradients / GIB:.1f} GiB of gradients)"
        )
        if self.single_seconds is None:
            return ours + "; one GPU has no plan predicted to fit"
        single = f"one GPU: {self.single_seconds:.2f} s ({self.single_plan.describe()})"
        if self.slower:
            return (
                f"{ours} vs {single}: with {sequences_per_step} sequences per step one GPU is predicted faster; "
                "use --gpus 1, or raise effective_batch_size so each process has more to compute per all-reduce"
            )
        return f"{ours} vs {single}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "seconds": self.seconds,
            "compute": self.compute,
            "communication": self.communication,
            "gradient_bytes": self.gradients,
            "single_gpu_seconds": self.single_seconds,
            "slower_than_one_gpu": self.slower,
            "single_gpu_plan": self.single_plan.to_dict() if self.single_plan else None,
        }


def compare_with_one_gpu(
    config: Any,
    facts: DeviceFacts,
    budget: int,
    policy: Any,
    workload: Workload,
    plan: Plan,
    speed: float,
    shape: ModelShape,
) -> WorldSizeNote | None:
    """For a plan of several processes: its predicted step time against the best one-GPU plan's; None for one process."""
    if plan.world_size <= 1:
        return None
    sequences = config.effective_batch_size
    compute, communication = step_seconds(plan, speed, shape, workload, sequences)
    alone_config = config.model_copy(
        update={"distributed": config.distributed.model_copy(update={"nproc_per_node": 1, "nnodes": 1})}
    )
    single = choose(alone_config, facts, budget, policy, workload=workload)
    single_seconds = sum(step_seconds(single.plan, single.speed, shape, workload, sequences)) if single else None
    return WorldSizeNote(
        plan.world_size,
        compute,
        communication,
        gradient_bytes(shape, plan, workload),
        single.plan if single else None,
        single_seconds,
    )
