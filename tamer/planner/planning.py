"""The planner's one entry point: `Planner` binds what a run is planned on (its config, the card, the model's
shape, the workload, the policy, the memory budget and the past attempts) and answers the three questions the
supervisor and `tamer plan` ask: which plan (`choose`), how much memory a plan will reserve (`predicted_peak`)
and how much of it lives in CUDA managed memory (`managed_bytes`).

The supervisor (tamer/daemon/supervisor.py) builds one per run, `tamer plan` (tamer/cli/commands_plan.py) one per
command, both with `Planner.for_run`: the pipeline (shape -> workload -> correction -> budget -> choose) is
written here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tamer.config import RunConfig
from tamer.plan import DeviceFacts, Plan
from tamer.planner.calibrate import Observation, correction_factor
from tamer.planner.candidates import Choice, PlannerPolicy, choose, device_budget, plan_key, shape_of
from tamer.planner.estimate import ModelShape, Workload, estimate


def workload_of(config: RunConfig, data: Any = None, **overrides: Any) -> Workload:
    """What a micro-batch is sized on: `data` (the run's DataProfile, tamer/recipes/profile.py) as preflight measured it,
    else SQuAD's figures; the LM head sees at least planner.supervised_per_sequence scored tokens per sequence."""
    overrides.setdefault("supervised_per_sequence", config.planner.supervised_per_sequence)
    return Workload.from_config(config, data=data, **overrides)


def managed_bytes(shape: ModelShape, plan: Plan, workload: Workload) -> int:
    """The child's CUDA managed memory by the estimate: a paged optimizer's moments (0 for the other optimizers)."""
    if plan.optimizer != "paged_adamw_8bit":
        return 0
    return estimate(shape, plan, workload).pageable


@dataclass
class Planner:
    """The planner for one run on one card. `past()` reads the past attempts of this model on this card each
    time it is asked (a run's own attempts add to them as it goes)."""

    config: RunConfig
    facts: DeviceFacts
    shape: ModelShape
    workload: Workload
    policy: PlannerPolicy
    budget: int
    """Device bytes the child may use, CUDA context included (the card, or gpu_mem_cap plus the context)."""
    past: Callable[[], list[Observation]] = field(default=lambda: [])

    @classmethod
    def for_run(
        cls,
        config: RunConfig,
        facts: DeviceFacts,
        *,
        shape: ModelShape | None = None,
        data: Any = None,
        past: Callable[[], list[Observation]] | None = None,
        **workload: Any,
    ) -> Planner:
        """The planner of `config` on `facts`: the shape the config trains (or `shape`), the workload sized on
        `data` (the run's DataProfile; None: SQuAD's figures) with `workload` overrides (tamer plan's options),
        the config's policy and budget. A ConfigError when the shape or the card's memory is unknown."""
        return cls(
            config,
            facts,
            shape or shape_of(config),
            workload_of(config, data, **workload),
            PlannerPolicy.from_config(config),
            device_budget(facts.total_memory, config.gpu_mem_cap),
            past or (lambda: []),
        )

    def correction(self) -> float:
        """Measured over predicted peaks of the past attempts (calibrate.correction_factor); 1.0 without any."""
        return correction_factor(self.past())

    def choose(
        self, failed: Iterable[Plan] = (), oom_hints: Iterable[Mapping[str, Any]] = (), budget: int | None = None
    ) -> Choice | None:
        """The fastest plan predicted to fit, never one of `failed`, steered by `oom_hints` (each an Outcome.to_dict()
        with "plan" added); under `budget` when it is smaller (other processes hold part of the card). None: no plan
        is predicted to fit with the margin."""
        room = self.budget if budget is None else min(self.budget, budget)
        hints = list(oom_hints)
        return choose(
            self.config,
            self.facts,
            room,
            self.policy,
            exclude={plan_key(plan) for plan in failed},
            oom_hint=hints or None,
            workload=self.workload,
            correction=self.correction(),
        )

    def predicted_peak(self, plan: Plan) -> int:
        """Peak bytes PyTorch's allocator is predicted to reserve under `plan`, corrected by the past attempts."""
        return estimate(self.shape, plan, self.workload).with_correction(self.correction()).reserved

    def managed_bytes(self, plan: Plan) -> int:
        return managed_bytes(self.shape, plan, self.workload)
