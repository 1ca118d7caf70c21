"""One attempt of a run, inside the child: build everything from the plan, resume from the newest
valid checkpoint, train, checkpoint, evaluate, and report every step.

Reads top to bottom: `Trainer.run()` is setup -> resume -> loop -> final checkpoint and evaluation.
The parts around the loop live beside it: the task (tamer/engine/recipe.py), resuming and RNG state
(tamer/engine/resume.py), heartbeats and database rows (tamer/engine/reporting.py), checkpoints
(tamer/engine/checkpointing.py), device and memory limits (tamer/engine/limits.py). `report.phase`,
`state.step` and `plan.micro_batch_size` always say where the attempt is, so a failure can be reported
with its phase (the child's report, tamer/engine/child.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tamer.config import RunConfig, config_from_dict
from tamer.engine import batching, distributed, limits, oom_snapshot, resume
from tamer.engine.attempt import Attempt, Training, TrainState
from tamer.engine.checkpointing import Checkpointer
from tamer.engine.faults import FaultPlan
from tamer.engine.loss import SupervisedLoss
from tamer.engine.model import (
    LayerCheckpointing,
    compile_layers,
    set_cudnn_attention,
    should_compile,
    use_cudnn_attention,
)
from tamer.engine.optim import build_optimizer, build_scheduler, clip_gradients, warmup_steps
from tamer.engine.recipe import cached_examples, recipe_for
from tamer.engine.reporting import Reporter
from tamer.engine.sampling import LengthGroupedOrder, SampleOrder
from tamer.errors import DataError
from tamer.inject import parse_faults
from tamer.plan import LOSS_CHUNK_TOKENS, Plan
from tamer.protocol import attempt_dir, plan_file
from tamer.strategies.split_micro_batch import split_in_process


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor]
    sample_ids: list[int]
    tokens: int
    computed_tokens: int


class StopRequested(Exception):
    """SIGTERM/SIGINT reached the child: checkpoint at the step boundary, then exit."""


class Trainer:
    def __init__(self, run_dir: Path, attempt: int, stop_flag: dict[str, bool]) -> None:
        self.run_dir = run_dir
        self.attempt = attempt
        self.stop_flag = stop_flag
        spec = json.loads((run_dir / "run.json").read_text())
        self.run_id: str = spec["run_id"]
        self.config = _config(spec["config"])
        if self.config.torch_threads:  # the run's thread count, on every attempt: exact resume depends on it
            torch.set_num_threads(self.config.torch_threads)
        plan = Plan.from_dict(json.loads(plan_file(run_dir, attempt).read_text()))
        self.group = distributed.from_env()
        self.faults = FaultPlan(
            parse_faults(self.config.inject) + parse_faults(_env_faults()), attempt, self.group.rank
        )
        self.report = Reporter(spec["db_path"], self.run_id, attempt, self.group, attempt_dir(run_dir, attempt))
        self.recipe = recipe_for(self.config)
        self.state = TrainState()
        self.report.beat("load")
        self.device = limits.choose_device(self.config, self.group)
        # What the helpers (resume, checkpoints, the recipe's score) are given instead of the trainer.
        self.context = Attempt(
            run_dir,
            self.run_id,
            attempt,
            self.config,
            plan,
            self.device,
            self.group,
            self.report,
            self.faults,
            self.state,
        )

    @property
    def plan(self) -> Plan:
        """The plan in force (the attempt's: an in-process split replaces it there)."""
        return self.context.plan

    @plan.setter
    def plan(self, plan: Plan) -> None:
        self.context.plan = plan

    def where(self) -> dict[str, Any]:
        """Where the attempt is, for the child's exit report: phase, step (the one under way), micro-batch, rank."""
        phase = self.report.phase
        in_flight = phase in ("forward", "backward", "optimizer")
        return {
            "phase": phase,
            "step": self.state.step + 1 if in_flight else self.state.step,
            "micro_batch_size": self.plan.micro_batch_size,
            "rank": self.group.rank,
        }

    # --- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        limits.set_device_limits(self.device, self.config, self.report.event)
        attention = set_cudnn_attention(
            self.device, use_cudnn_attention(self.config.cudnn_attention, self.config.batching_mode)
        )
        if attention is not None:
            self.report.event("attention", attention)
        distributed.init(self.group, self.device, self.config.distributed.backend, self.config.distributed.timeout)
        if self.config.memory_snapshot:
            oom_snapshot.start_recording(self.device)
        self.faults.check("load", None, self.plan.micro_batch_size)
        self.tokenizer = self.recipe.load_tokenizer()
        with distributed.main_first(self.group):
            self.train_examples, self.eval_examples = cached_examples(
                self.recipe, self.tokenizer, self.config, self.run_dir, self.report.event
            )
        if self.config.batching_mode in batching.GROUPED_MODES:
            self.order: SampleOrder = LengthGroupedOrder(
                len(self.train_examples),
                self.config.seed,
                [len(example.input_ids) for example in self.train_examples],
                self.config.effective_batch_size,
                self.config.length_window,
            )
        else:
            self.order = SampleOrder(len(self.train_examples), self.config.seed)
        steps_per_epoch = len(self.train_examples) // self.config.effective_batch_size
        if steps_per_epoch < 1 and self.config.max_steps is None:
            raise DataError(
                f"{len(self.train_examples)} training examples make no full batch of {self.config.effective_batch_size}"
            )
        self.total_steps = self.context.total_steps = self.config.max_steps or self.config.epochs * steps_per_epoch
        self.report.total_steps(self.total_steps)

        self.model, self.base, checkpoint = resume.load_model(self.context)
        self.compiled = should_compile(self.config.compile, self.plan, self.device)
        if self.compiled:
            compile_layers(self.model)
        self.layer_checkpointing = LayerCheckpointing(self.model) if self.plan.checkpoint_layers_by_tokens else None
        self.loss_module = SupervisedLoss(self.model, LOSS_CHUNK_TOKENS if self.plan.chunked_loss else None)
        self.wrapped = distributed.wrap(self.loss_module, self.plan, self.device, self.group)
        self.parameters = [p for p in self.wrapped.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.plan, self.parameters, self.config)
        self._fallback_reported = False
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup_steps(self.config, self.total_steps))
        self.scaler = (
            torch.amp.GradScaler("cuda") if self.plan.autocast_dtype == "fp16" and self.device.type == "cuda" else None
        )
        self.training = Training(
            self.model, self.wrapped, self.optimizer, self.scheduler, self.scaler, self.order, self.base
        )
        if checkpoint is not None:
            resume.restore(self.context, self.training, checkpoint)
        self.report.resumed_from(self.state.step)
        limits.set_host_limit(self.config, self.report.event)

    # --- training -------------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        peak_lr = self.config.learning_rate_for(self.plan)
        self.report.event(
            "start",
            f"attempt {self.attempt} training from step {self.state.step} of {self.total_steps}: {self.plan.describe()}"
            + (", compiled layers" if self.compiled else "")
            + f"; peak learning rate {peak_lr:g}",
            plan=self.plan.to_dict(),
            device=str(self.device),
            torch_threads=torch.get_num_threads(),
            compiled=self.compiled,
            peak_learning_rate=peak_lr,
        )
        self.checkpointer = Checkpointer(self.context, self.training)
        self.checkpointer.announce()
        self.stop_flag["training"] = True  # from here a stop waits for the step boundary and checkpoints
        try:
            while self.state.step < self.total_steps:
                if self.stop_flag.get("stop"):
                    raise StopRequested()
                self.train_step()
                step = self.state.step
                if self.checkpointer.due(step) and step != self.total_steps:
                    self.save_checkpoint(wait=False)
                if self.config.eval_every and step % self.config.eval_every == 0 and step != self.total_steps:
                    self.evaluate()
                if self.recipe.score_every and step % self.recipe.score_every == 0 and step != self.total_steps:
                    self.recipe.score(
                        self.context, self.model, self.tokenizer
                    )  # the last step is scored after the run (tamer/daemon/result.py)
        except BaseException:  # a stop or a failure: the save in flight still lands
            self.checkpointer.wait_quietly()
            raise
        self.save_checkpoint()
        if not distributed.broadcast(self.group, self.group.is_main and self.report.eval_recorded(self.total_steps)):
            self.evaluate()
        self.report.phase = "done"

    def _accumulate(self, step: int, sample_ids: list[int], supervised: int) -> tuple[torch.Tensor, int, int]:
        """Forward and backward of every micro-batch of this rank's share of one optimizer step;
        (this rank's part of the step's loss, its useful tokens, its computed tokens).

        The loss is normalised by the supervised tokens of the whole step (all ranks), and multiplied by
        the world size because DDP and FSDP average gradients over the ranks: the sum of the ranks'
        gradients is the one-process gradient of the step."""
        plan = self.plan
        total_loss = torch.zeros((), device=self.device)
        tokens = computed = 0
        batches = self.batches(sample_ids, plan.micro_batch_size, self.train_examples)
        for index, batch in enumerate(batches):
            with distributed.gradient_sync(self.wrapped, plan, sync=index == len(batches) - 1):
                self.report.beat("forward")
                self.faults.check("forward", step, plan.micro_batch_size)
                if self.layer_checkpointing is not None:
                    layers, new = self.layer_checkpointing.for_tokens(plan, batch.computed_tokens)
                    if new:
                        self.report.event(
                            "checkpointing_by_size",
                            f"{layers} of {len(self.layer_checkpointing.layers)} decoder layers "
                            f"checkpointed for a micro-batch of {batch.computed_tokens:,} tokens (first at step {step})",
                            step=step,
                            layers=layers,
                            tokens=batch.computed_tokens,
                        )
                with self.autocast():
                    summed = self.wrapped(**batch.tensors)
                loss = summed * (plan.world_size / max(1, supervised))
                self.report.beat("backward")
                self.faults.check("backward", step, plan.micro_batch_size)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total_loss += summed.detach() / max(1, supervised)
            tokens += batch.tokens
            computed += batch.computed_tokens
            del loss, summed  # bitsandbytes int8 layers keep their fp32 inputs alive through these
        return total_loss, tokens, computed

    def _split_in_process(self, step: int, error: torch.OutOfMemoryError) -> bool:
        """After an activation OOM, when the plan allows it (the ladder decided, tamer/strategies/ladder.py
        `for_child`): free, halve the micro-batch, and let the caller retry the same optimizer step with the
        same samples. False: let the OOM end the child."""
        halved = split_in_process(self.plan, self.report.phase)
        if halved is None:
            return False
        failed_at = time.time()
        phase, old = self.report.phase, self.plan
        self.optimizer.zero_grad(set_to_none=True)
        error.__traceback__ = None  # its frames hold the activations
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.plan = halved
        self.report.plan_changed(self.plan)
        self.report.event(
            "in_process_split",
            f"CUDA OOM in {phase} at micro-batch {old.micro_batch_size}: micro-batch halved to "
            f"{self.plan.micro_batch_size} in process, retrying step {step} with the same samples",
            step=step,
            phase=phase,
            old_micro_batch=old.micro_batch_size,
            new_micro_batch=self.plan.micro_batch_size,
            failed_at=failed_at,
            error=str(error).splitlines()[0][:300] if str(error) else "",
        )
        return True

    def batches(self, sample_ids: list[int], size: int, examples: list[Any]) -> list[Batch]:
        config = self.config
        built = batching.build(
            examples,
            sample_ids,
            size,
            config.batching_mode,
            self.tokenizer.pad_token_id,
            config.max_seq_len,
            config.batch_multiple,
        )
        return [
            Batch(
                {name: value.to(self.device) for name, value in micro.tensors.items()},
                micro.sample_ids,
                micro.useful_tokens,
                micro.computed_tokens,
            )
            for micro in built
        ]

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.context.autocast()

    def train_step(self) -> None:
        plan, state = self.plan, self.state
        step = state.step + 1
        started = time.perf_counter()
        sample_ids = self.order.indices(state.samples_consumed, plan.effective_batch_size)
        supervised = sum(self.recipe.supervised_tokens(self.train_examples[i]) for i in sample_ids)
        mine = distributed.shard_of(self.group, sample_ids)
        while True:
            try:
                total_loss, tokens, computed = self._accumulate(step, mine, supervised)
                break
            except torch.OutOfMemoryError as error:
                if not self._split_in_process(step, error):
                    raise
        plan = self.plan
        self.report.beat("optimizer")
        self.faults.check("optimizer", step, plan.micro_batch_size)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.optimizer, self.parameters, self.config.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if getattr(self.optimizer, "fallback_reason", None) and not self._fallback_reported:
            self._fallback_reported = True
            self.report.event(
                "optimizer_fallback",
                f"the Triton 8-bit AdamW step failed ({self.optimizer.fallback_reason}); "
                "bitsandbytes' kernels step the same state from now on (optimizer_kernel: bitsandbytes skips the try)",
                step=step,
                reason=self.optimizer.fallback_reason,
            )
        self.scheduler.step()
        # DDP's gradients are views into its all-reduce buckets, which live anyway: zeroing them in place
        # keeps them so. Set to None, the next step's first micro-batches (no_sync) would build fresh
        # gradients beside the buckets, and the synced one copy them in: the gradients twice at the peak.
        self.optimizer.zero_grad(set_to_none=not (self.plan.world_size > 1 and self.plan.parallel == "ddp"))
        asked_to_stop = bool(self.stop_flag.get("stop")) or self.report.stop_requested()
        loss_value, tokens, computed, stops = distributed.all_sum(
            self.group, [float(total_loss), float(tokens), float(computed), float(asked_to_stop)], self.device
        )
        if stops:  # every rank stops after the same step
            self.stop_flag["stop"] = True
        per_rank = self.report.memory_per_rank(self.device)
        elapsed = time.perf_counter() - started
        state.step = step
        state.samples_consumed += plan.effective_batch_size
        self.report.step(
            step=step,
            samples_consumed=state.samples_consumed,
            plan=plan,
            loss=loss_value,
            lr=lr,
            grad_norm=float(grad_norm),
            tokens=tokens,
            computed_tokens=computed,
            elapsed=elapsed,
            sample_ids=sample_ids,
            per_rank=per_rank,
        )

    # --- checkpoints and evaluation ---------------------------------------------------------------

    def save_checkpoint(self, wait: bool = True) -> None:
        """Checkpoint this step (tamer/engine/checkpointing.py): the training loop stalls only for the
        snapshot. `wait`: until it is on disk (a stop, the end of the run), and not twice."""
        self.checkpointer.save(wait)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Loss on the held-out examples, recorded as an eval row; None (and no row) when nothing is held out
        (`eval_samples: 0`): a loss of 0 over 0 tokens would read as a perfect model."""
        if not self.eval_examples:
            return None
        self.report.beat("eval")
        self.faults.check("eval", self.state.step, self.plan.micro_batch_size)
        self.wrapped.eval()
        total, count = 0.0, 0
        ids = list(range(len(self.eval_examples)))
        chunks = [ids[i : i + self.plan.eval_batch_size] for i in range(0, len(ids), self.plan.eval_batch_size)]
        # Every rank runs the same number of forwards (FSDP gathers weights in each): a rank short of a
        # chunk repeats the first and discards the result.
        world, rank = self.group.world_size, self.group.rank
        for round_start in range(0, len(chunks), world):
            index = round_start + rank
            chunk = chunks[index] if index < len(chunks) else chunks[0]
            batch = self.batches(chunk, len(chunk), self.eval_examples)[0]
            self.report.beat("eval")
            with self.autocast():
                summed = self.wrapped(**batch.tensors)
            if index < len(chunks):
                total += float(summed)
                count += int((batch.tensors["labels"][:, 1:] != -100).sum())
        self.wrapped.train()
        total, count = distributed.all_sum(self.group, [total, float(count)], self.device)
        count = int(count)
        eval_loss = total / max(1, count)
        if not self.group.is_main:
            self.report.beat("between_steps")
            return eval_loss
        self.report.evaluation(
            step=self.state.step,
            eval_loss=eval_loss,
            eval_tokens=count,
            eval_samples=len(ids),
            eval_batch_size=self.plan.eval_batch_size,
        )
        self.report.beat("between_steps")
        return eval_loss


def _config(data: dict[str, Any]) -> RunConfig:
    return config_from_dict(data)


def _env_faults() -> list[str]:
    return [item for item in os.environ.get("TAMER_INJECT", "").split(";") if item.strip()]
