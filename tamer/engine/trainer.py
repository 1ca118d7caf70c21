"""One attempt of a run, inside the child: build everything from the plan, resume from the newest
valid checkpoint, train, checkpoint, evaluate, and write every step to SQLite.

Reads top to bottom: `Trainer.run()` is setup -> resume -> loop -> final checkpoint and evaluation.
`phase`, `step` and `micro_batch_size` always say where the attempt is, so a failure can be reported
with its phase (the child's report, tamer/daemon/child.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from tamer.config import RunConfig
from tamer.daemon.child import STOP_FILE, heartbeat_name
from tamer.engine import batching, distributed, memory, result, snapshot
from tamer.engine.checkpointing import Checkpointer, ResumeCheck
from tamer.engine.faults import FaultPlan
from tamer.engine.loss import SupervisedLoss
from tamer.engine.model import build_model, compile_layers, materialize_random_init, pin_base, should_compile
from tamer.engine.optim import build_optimizer, build_scheduler, repage_state, restore_scheduler, warmup_steps
from tamer.engine.sampling import LengthGroupedOrder, SampleOrder
from tamer.inject import parse_faults
from tamer.plan import Plan
from tamer.recipes import squad
from tamer.state import checkpoints, queries
from tamer.state.db import Database
from tamer.units import parse_size

log = structlog.get_logger("tamer.child")

# Test hook for the negative control of the exact-resume test: names what NOT to restore.
SKIP_RESTORE_ENV = "TAMER_UNSAFE_SKIP_RESTORE"
CHUNK_SIZE = 1024
MEMORY_FIELDS = ("mem_allocated", "mem_reserved", "mem_peak", "device_used", "host_rss")


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor]
    sample_ids: list[int]
    tokens: int
    computed_tokens: int


@dataclass
class TrainState:
    step: int = 0
    samples_consumed: int = 0
    checkpoint_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
        self.plan = Plan.from_dict(json.loads((run_dir / "plans" / f"attempt-{attempt}.json").read_text()))
        self.group = distributed.from_env()
        self.db = Database(spec["db_path"])
        self.faults = FaultPlan(parse_faults(self.config.inject) + parse_faults(_env_faults()), attempt, self.group.rank)
        self.attempt_dir = run_dir / "attempts" / str(attempt)
        self.heartbeat_path = self.attempt_dir / heartbeat_name(self.group.rank)
        self.stop_path = self.attempt_dir / STOP_FILE
        self.first_step = True
        self.state = TrainState()
        self.beat("load")
        self.device = _device(self.config, self.group)
        self.skip_restore = set(filter(None, os.environ.get(SKIP_RESTORE_ENV, "").split(",")))

    # --- where the attempt is, for reports ------------------------------------------------------

    def where(self) -> dict[str, Any]:
        in_flight = self.phase in ("forward", "backward", "optimizer")
        return {"phase": self.phase, "step": self.state.step + 1 if in_flight else self.state.step,
                "micro_batch_size": self.plan.micro_batch_size, "rank": self.group.rank}

    def beat(self, phase: str) -> None:
        """Say where we are and that we are alive (the supervisor's hang watchdog reads this)."""
        self.phase = phase
        with open(self.heartbeat_path, "w") as heartbeat:
            heartbeat.write(f"{phase} {int(self.first_step)}")

    def event(self, kind: str, message: str, **detail: Any) -> None:
        """Log it; rank 0 also records it in the database (one row per event, not one per rank)."""
        log.info(kind, message=message, rank=self.group.rank, **detail)
        if self.group.is_main:
            self.db.event(self.run_id, kind, message, attempt=self.attempt, **detail)

    # --- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        self._set_device_limits()
        distributed.init(self.group, self.device, self.config.distributed.backend, self.config.distributed.timeout)
        if self.config.memory_snapshot:
            snapshot.start_recording(self.device)
        self.faults.check("load", None, self.plan.micro_batch_size)
        self.tokenizer = squad.load_tokenizer(self.config.tokenizer if self.config.tokenizer else ("bundled" if self.config.init == "random" else None), self.config.model)
        with distributed.main_first(self.group):
            self.train_examples, self.eval_examples = self._load_examples()
        if self.config.batching_mode in batching.GROUPED_MODES:
            self.order: SampleOrder = LengthGroupedOrder(len(self.train_examples), self.config.seed,
                                                         [len(example.input_ids) for example in self.train_examples],
                                                         self.config.effective_batch_size, self.config.length_window)
        else:
            self.order = SampleOrder(len(self.train_examples), self.config.seed)
        steps_per_epoch = len(self.train_examples) // self.config.effective_batch_size
        if steps_per_epoch < 1 and self.config.max_steps is None:
            from tamer.errors import DataError

            raise DataError(f"{len(self.train_examples)} training examples make no full batch of {self.config.effective_batch_size}")
        self.total_steps = self.config.max_steps or self.config.epochs * steps_per_epoch
        if self.group.is_main:
            self.db.update_run(self.run_id, total_steps=self.total_steps)

        resume_check = ResumeCheck(self)
        checkpoint = resume_check.start()
        while True:  # the checkpoint's files are verified while the model loads from it
            with distributed.main_first(self.group):
                self.base, adapter_dir = self._model_source(checkpoint)
            torch.manual_seed(self.config.seed)  # LoRA's initial adapters: the same on every rank and every attempt
            try:
                self.model = build_model(self.config, self.plan, self.device, self.base, adapter_dir)
            except Exception:
                if resume_check.confirm(checkpoint) is checkpoint:
                    raise  # not a damaged checkpoint's doing
            verified = resume_check.confirm(checkpoint)
            if verified is checkpoint:
                break
            self.model, checkpoint = None, verified  # damaged: load again from an older one
        self.compiled = should_compile(self.config.compile, self.plan, self.device)
        if self.compiled:
            compile_layers(self.model)
        self.loss_module = SupervisedLoss(self.model, CHUNK_SIZE if self.plan.chunked_loss else None)
        self.wrapped = distributed.wrap(self.loss_module, self.plan, self.device, self.group)
        self.parameters = [p for p in self.wrapped.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.plan, self.parameters, self.config)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup_steps(self.config, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if self.plan.autocast_dtype == "fp16" and self.device.type == "cuda" else None
        if checkpoint is not None:
            self._restore(checkpoint)
        if self.group.is_main:
            self.db.update_attempt(self.run_id, self.attempt, resumed_from_step=self.state.step)
        self._set_host_limit()

    def _checkpoint_to_resume(self) -> checkpoints.Checkpoint | None:
        """The newest valid checkpoint; rank 0 verifies it and every rank resumes the same one."""
        found = None
        if self.group.is_main:
            checkpoint, skipped = checkpoints.newest_valid(self.run_dir)
            for name, reason in skipped:
                self.event("checkpoint_skipped", f"checkpoint {name} is not valid ({reason}); " + ("using an older one" if checkpoint else "no valid checkpoint left: training starts over"), checkpoint=name, reason=reason)
            found = (str(checkpoint.path), checkpoint.manifest) if checkpoint else None
        found = distributed.broadcast(self.group, found)
        return checkpoints.Checkpoint(Path(found[0]), found[1]) if found else None

    def _set_device_limits(self) -> None:
        if self.device.type != "cuda":
            return
        torch.cuda.set_device(self.device)  # before joining the group: NCCL binds to the current device
        if self.config.gpu_mem_cap:
            cap = parse_size(self.config.gpu_mem_cap)
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), self.device)
        settings = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
        if settings:
            torch.empty(1, device=self.device)  # the allocator reads its settings on first use
            self.event("allocator", f"allocator settings in force: {_allocator_settings() or settings}", requested=settings, in_force=_allocator_settings())

    def _set_host_limit(self) -> None:
        """`host_mem_cap`: the address space may grow by at most this much beyond what setup mapped."""
        if not self.config.host_mem_cap:
            return
        current = memory.vm_size()
        limit = current + parse_size(self.config.host_mem_cap)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        self.event("host_mem_cap", f"address space capped at {limit} bytes ({self.config.host_mem_cap} above setup)", limit=limit)

    def _load_examples(self) -> tuple[list[squad.Example], list[squad.Example]]:
        """Tokenized train and eval examples, cached in the run folder so restarts skip tokenizing."""
        key = hashlib.sha256(
            json.dumps([self.config.data, self.config.tokenizer, self.config.model, self.config.max_seq_len,
                        self.config.eval_samples, self.config.seed]).encode()
        ).hexdigest()[:16]
        cache = self.run_dir / f"examples-{key}.pt"
        if cache.is_file():
            try:
                data = torch.load(cache, weights_only=False)
                return data["train"], data["eval"]
            except Exception as error:  # a torn cache is rebuilt, never trusted
                log.warning("examples_cache_unreadable", error=str(error))
        train_records, eval_records = squad.load_train_and_eval(self.config.data, self.config.eval_samples, self.config.seed)
        train, train_stats = squad.build_examples(train_records, self.tokenizer, self.config.max_seq_len)
        evaluation, eval_stats = squad.build_examples(eval_records, self.tokenizer, self.config.max_seq_len)
        self.event("data", f"{len(train)} training and {len(evaluation)} validation examples; "
                   f"{train_stats['truncated']} truncated, {train_stats['skipped_too_long']} skipped as too long",
                   train=train_stats, eval=eval_stats)
        tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        torch.save({"train": train, "eval": evaluation}, tmp)
        os.replace(tmp, cache)
        return train, evaluation

    def _model_source(self, checkpoint: checkpoints.Checkpoint | None) -> tuple[str, Path | None]:
        """Where the base weights come from, and the adapters to resume, for this plan and checkpoint."""
        if checkpoint is None:
            if self.config.init == "random":
                init_dir = self.run_dir / "init"
                materialize_random_init(self.config, init_dir)
                return str(init_dir), None
            return self.config.model, None
        manifest = checkpoint.manifest
        if manifest["kind"] == "full":
            weights = checkpoint.path / "model"
            if self.plan.lora:
                base = pin_base(weights, self.run_dir / "bases" / f"step-{checkpoint.step}")
                self.event("lora_from_full", f"LoRA adapters start fresh on the weights trained so far (step {checkpoint.step})", base=str(base))
                return str(base), None
            return str(weights), None
        base = str(self.run_dir / manifest["base"]) if manifest.get("base") else self.config.model
        return base, checkpoint.path / "adapter"

    def _restore(self, checkpoint: checkpoints.Checkpoint) -> None:
        manifest = checkpoint.manifest
        self.state.step = checkpoint.step
        self.state.checkpoint_step = checkpoint.step
        self.state.samples_consumed = 0 if "cursor" in self.skip_restore else int(manifest["samples_consumed"])
        old_plan = Plan.from_dict(manifest["plan"])
        same_parameters = old_plan.lora == self.plan.lora
        if old_plan.optimizer == self.plan.optimizer and same_parameters:
            state = torch.load(checkpoint.path / "optimizer.pt", map_location=self.device, weights_only=False)
            distributed.load_optimizer_state(self.wrapped, self.optimizer, self.plan, state)
            repage_state(self.optimizer)
        else:
            why = (f"optimizer changed from {old_plan.optimizer} to {self.plan.optimizer}"
                   if old_plan.optimizer != self.plan.optimizer else "the trainable parameters changed (LoRA)")
            self.event("optimizer_reset", f"optimizer state reset: {why}", old=old_plan.optimizer, new=self.plan.optimizer)
        restore_scheduler(self.scheduler, torch.load(checkpoint.path / "scheduler.pt", weights_only=False))
        scaler_file = checkpoint.path / "scaler.pt"
        if self.scaler is not None and scaler_file.is_file():
            self.scaler.load_state_dict(torch.load(scaler_file, weights_only=False))
        if "rng" not in self.skip_restore:
            rng = torch.load(checkpoint.path / "rng.pt", weights_only=False)
            if "ranks" in rng:  # one state per rank; a rank the checkpoint did not have keeps the seeded one
                rng = rng["ranks"][self.group.rank] if self.group.rank < len(rng["ranks"]) else None
            if rng is not None:
                _set_rng_state(rng)
        self.event("resume", f"resumed from checkpoint step {checkpoint.step} ({self.state.samples_consumed} samples consumed)",
                   step=checkpoint.step, samples_consumed=self.state.samples_consumed, checkpoint=checkpoint.path.name)

    # --- training -------------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        self.event("start", f"attempt {self.attempt} training from step {self.state.step} of {self.total_steps}: {self.plan.describe()}"
                   + (", compiled layers" if self.compiled else ""),
                   plan=self.plan.to_dict(), device=str(self.device), torch_threads=torch.get_num_threads(),
                   compiled=self.compiled)
        self.checkpointer = Checkpointer(self)
        self.checkpointer.announce()
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
                if self.config.eval.squad_every and step % self.config.eval.squad_every == 0 and step != self.total_steps:
                    result.evaluate_during_training(self)  # the last step is scored after the run (tamer/daemon/result.py)
        except BaseException:  # a stop or a failure: the save in flight still lands
            self.checkpointer.wait_quietly()
            raise
        self.save_checkpoint()
        if not distributed.broadcast(self.group, self.group.is_main and self._eval_done(self.total_steps)):
            self.evaluate()
        self.phase = "done"

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
                self.beat("forward")
                self.faults.check("forward", step, plan.micro_batch_size)
                with self.autocast():
                    summed = self.wrapped(**batch.tensors)
                loss = summed * (plan.world_size / max(1, supervised))
                self.beat("backward")
                self.faults.check("backward", step, plan.micro_batch_size)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total_loss += summed.detach() / max(1, supervised)
            tokens += batch.tokens
            computed += batch.computed_tokens
            del loss, summed  # bitsandbytes int8 layers keep their fp32 inputs alive through these
        return total_loss, tokens, computed

    def _split_in_process(self, step: int, error: torch.OutOfMemoryError) -> bool:
        """After an activation OOM: free, halve the micro-batch, and let the caller retry the same optimizer
        step with the same samples (planner mode with in_process_split). False: let the OOM end the child."""
        from tamer.strategies import registry

        ladder = self.config.ladder
        split = registry.get("split_micro_batch")
        facts = None
        # Several ranks must run the same number of micro-batches (the gradient all-reduce): an OOM on
        # one ends the group instead, and the supervisor escalates every rank together.
        allowed = (ladder.mode == "planner" and ladder.in_process_split and "split_micro_batch" in ladder.order
                   and self.plan.world_size == 1
                   and self.phase in ("forward", "backward")
                   and self.plan.micro_batch_size // 2 >= self.config.planner.min_micro_batch
                   and split.not_applicable(self.plan, facts) is None)
        if not allowed:
            return False
        failed_at = time.time()
        phase, old = self.phase, self.plan
        self.optimizer.zero_grad(set_to_none=True)
        error.__traceback__ = None  # its frames hold the activations
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.plan = split.apply(old, facts)
        from tamer.state.checkpoints import write_json_atomic

        write_json_atomic(self.heartbeat_path.with_name("plan.json"), self.plan.to_dict())
        self.event("in_process_split", f"CUDA OOM in {phase} at micro-batch {old.micro_batch_size}: micro-batch halved to "
                   f"{self.plan.micro_batch_size} in process, retrying step {step} with the same samples",
                   step=step, phase=phase, old_micro_batch=old.micro_batch_size, new_micro_batch=self.plan.micro_batch_size,
                   failed_at=failed_at, error=str(error).splitlines()[0][:300] if str(error) else "")
        return True

    def batches(self, sample_ids: list[int], size: int, examples: list[squad.Example]) -> list[Batch]:
        config = self.config
        built = batching.build(examples, sample_ids, size, config.batching_mode, self.tokenizer.pad_token_id,
                               config.max_seq_len, config.batch_multiple)
        return [Batch({name: value.to(self.device) for name, value in micro.tensors.items()}, micro.sample_ids,
                      micro.useful_tokens, micro.computed_tokens) for micro in built]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.plan.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[self.plan.autocast_dtype])

    def train_step(self) -> None:
        plan, state = self.plan, self.state
        step = state.step + 1
        started = time.perf_counter()
        sample_ids = self.order.indices(state.samples_consumed, plan.effective_batch_size)
        supervised = sum(squad.answer_token_count(self.train_examples[i]) for i in sample_ids)
        mine = distributed.shard_of(self.group, sample_ids)
        while True:
            try:
                total_loss, tokens, computed = self._accumulate(step, mine, supervised)
                break
            except torch.OutOfMemoryError as error:
                if not self._split_in_process(step, error):
                    raise
        plan = self.plan
        self.beat("optimizer")
        self.faults.check("optimizer", step, plan.micro_batch_size)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        # DDP's gradients are views into its all-reduce buckets, which live anyway: zeroing them in place
        # keeps them so. Set to None, the next step's first micro-batches (no_sync) would build fresh
        # gradients beside the buckets, and the synced one copy them in: the gradients twice at the peak.
        self.optimizer.zero_grad(set_to_none=not (self.plan.world_size > 1 and self.plan.parallel == "ddp"))
        asked_to_stop = bool(self.stop_flag.get("stop")) or self.stop_path.exists()
        loss_value, tokens, computed, stops = distributed.all_sum(
            self.group, [float(total_loss), float(tokens), float(computed), float(asked_to_stop)], self.device)
        if stops:  # every rank stops after the same step
            self.stop_flag["stop"] = True
        readings = memory.readings(self.device)
        per_rank = distributed.all_gather(self.group, [readings[name] for name in MEMORY_FIELDS], self.device)
        elapsed = time.perf_counter() - started
        state.step = step
        state.samples_consumed += plan.effective_batch_size
        if self.group.is_main:
            self.db.insert_step({
                "run_id": self.run_id, "attempt": self.attempt, "step": step, "samples_consumed": state.samples_consumed,
                "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), "tokens": int(tokens),
                "tokens_per_s": tokens / elapsed if elapsed > 0 else None, "step_time": elapsed,
                "useful_tokens": int(tokens), "computed_tokens": int(computed),
                "micro_batch_size": plan.micro_batch_size, "grad_accumulation": plan.grad_accumulation,
                "wall_time": time.time(), "sample_ids": json.dumps(sample_ids), **_highest(per_rank),
                "rank_memory_json": json.dumps([dict(zip(MEMORY_FIELDS, row)) for row in per_rank]) if self.group.distributed else None,
            })
        self.first_step = False
        self.beat("between_steps")

    # --- checkpoints and evaluation ---------------------------------------------------------------

    def save_checkpoint(self, wait: bool = True) -> None:
        """Checkpoint this step (tamer/engine/checkpointing.py): the training loop stalls only for the
        snapshot. `wait`: until it is on disk (a stop, the end of the run), and not twice."""
        self.checkpointer.save(wait)

    def _eval_done(self, step: int) -> bool:
        return queries.eval_recorded(self.db, self.run_id, step)

    @torch.no_grad()
    def evaluate(self) -> float:
        self.beat("eval")
        self.faults.check("eval", self.state.step, self.plan.micro_batch_size)
        self.wrapped.eval()
        total, count = 0.0, 0
        ids = list(range(len(self.eval_examples)))
        chunks = [ids[i:i + self.plan.eval_batch_size] for i in range(0, len(ids), self.plan.eval_batch_size)]
        # Every rank runs the same number of forwards (FSDP gathers weights in each): a rank short of a
        # chunk repeats the first and discards the result.
        world, rank = self.group.world_size, self.group.rank
        for round_start in range(0, len(chunks), world):
            index = round_start + rank
            chunk = chunks[index] if index < len(chunks) else chunks[0]
            batch = self.batches(chunk, len(chunk), self.eval_examples)[0]
            self.beat("eval")
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
            self.beat("between_steps")
            return eval_loss
        self.db.insert_eval({"run_id": self.run_id, "attempt": self.attempt, "step": self.state.step, "eval_loss": eval_loss,
                             "eval_tokens": count, "eval_samples": len(ids), "eval_batch_size": self.plan.eval_batch_size,
                             "wall_time": time.time()})
        self.event("eval", f"validation loss {eval_loss:.4f} at step {self.state.step}", step=self.state.step, eval_loss=eval_loss)
        self.beat("between_steps")
        return eval_loss


def _config(data: dict[str, Any]) -> RunConfig:
    from tamer.config import config_from_dict

    return config_from_dict(data)


def _env_faults() -> list[str]:
    return [item for item in os.environ.get("TAMER_INJECT", "").split(";") if item.strip()]


def _device(config: RunConfig, group: distributed.Group) -> torch.device:
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from tamer.errors import ConfigError

        raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU; use --set device=cpu or auto")
    if group.distributed:
        if group.local_rank >= torch.cuda.device_count():
            from tamer.errors import ConfigError

            raise ConfigError(f"distributed.nproc_per_node: process {group.local_rank} has no GPU of its own "
                              f"(this machine has {torch.cuda.device_count()}); use --gpus {torch.cuda.device_count()} or fewer")
        return torch.device("cuda", group.local_rank)
    return torch.device("cuda", torch.cuda.current_device())


def _highest(per_rank: list[list[int | None]]) -> dict[str, int | None]:
    """Each memory reading's highest value over the ranks (the rank closest to its limit decides)."""
    out: dict[str, int | None] = {}
    for i, name in enumerate(MEMORY_FIELDS):
        values = [row[i] for row in per_rank if row[i] is not None]
        out[name] = max(values) if values else None
    return out


def _allocator_settings() -> str | None:
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    try:
        return getter() if getter else None
    except Exception:
        return None



def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
