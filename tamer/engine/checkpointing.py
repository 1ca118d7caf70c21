"""Checkpoints that do not stall training: a snapshot at the step boundary, written in the background.

The trainer (tamer/engine/trainer.py) owns one `Checkpointer` and asks it, after every step, whether a
save is due and, if so, to save. A save is two parts:

1. The snapshot, on the main thread at the step boundary (the only stall): every rank takes part in the
   collectives (FSDP gathers weights and optimizer state on rank 0, RNG states come from every rank),
   then rank 0 copies everything a resume needs - weights or adapters, optimizer state (bitsandbytes'
   paged 8-bit moments included), scheduler, scaler, RNG, cursor, plan - into host buffers, pinned on
   CUDA and reused from one save to the next.
2. The write, on a background thread of rank 0: tamer/state/checkpoints.save exactly as before (temporary
   folder, every file fsynced, manifest last, rename, folder fsync, keep >= 2), each file hashed as its
   bytes are written. A thread, not a process: the write is file I/O, safetensors bytes and torch.save,
   which leave the interpreter lock free, and a thread reads the snapshot without pickling it again.

At most one save is in flight: a save that comes due while the previous one is still writing is skipped
(counted and told in the next save's event), so the step loop never waits for a disk. A stop, SIGTERM,
the end of the run and a failure of the loop wait for the write in flight. A full disk is an event and
training goes on with the previous checkpoint; any other writer error is an event and one retry from
the same snapshot, and if that fails too the error ends the attempt (the supervisor restarts it from
the previous checkpoint), never a silent gap.

`checkpoint_async: false`, or a snapshot that does not fit the host memory (psutil's available memory and
`host_mem_cap`), writes on the main thread from the live tensors instead, as tamer always did.
`checkpoint_every: auto` picks the interval from the first save's measured cost (tamer/checkpoint_policy.py).
"""

from __future__ import annotations

import copy
import errno
import json
import os
import resource
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tamer import checkpoint_policy
from tamer.engine import distributed, memory
from tamer.engine.attempt import Attempt, Training
from tamer.engine.resume import rng_state
from tamer.state import checkpoints

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
HOST_MARGIN_BYTES = 1 << 30
"""Host memory kept free beyond the snapshot itself when deciding whether an async save fits."""
WRITE_ATTEMPTS = 2
"""A writer that fails for a reason other than a full disk tries once more from the same snapshot."""


# --- writing ---------------------------------------------------------------------------------------


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return memoryview(flat.contiguous().reshape(-1).view(torch.uint8).numpy())


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write `tensors` as a .safetensors file (what save_pretrained writes; from_pretrained reads it),
    hashing while writing; returns the file's digest."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with checkpoints.HashingFile(path) as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                handle.write(_tensor_bytes(tensor))
    assert handle.digest is not None
    return handle.digest


def write_torch(path: Path, value: Any) -> str:
    """torch.save through a hashing file; returns the file's digest."""
    with checkpoints.HashingFile(path) as handle:
        torch.save(value, handle)
    assert handle.digest is not None
    return handle.digest


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with each shared tensor (a tied head) under its first name only, as save_pretrained
    saves it; from_pretrained ties it again."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor
    return out


@dataclass
class Snapshot:
    """Everything one checkpoint holds, ready to write without touching the live model."""

    step: int
    kind: str  # "full" or "lora"
    weights: dict[str, torch.Tensor]
    model_files: list[Any]  # config objects with save_pretrained (model config, generation config, LoRA config)
    optimizer: Any
    scheduler: Any
    scaler: Any
    rng: Any
    manifest: dict[str, Any]
    nbytes: int = 0


def write_snapshot(folder: Path, snapshot: Snapshot, check_fault: Any) -> dict[str, str]:
    """Fill a checkpoint's temporary folder from `snapshot`; the digests of the files hashed while written."""
    subfolder = folder / ("adapter" if snapshot.kind == "lora" else "model")
    subfolder.mkdir()
    for config in snapshot.model_files:
        config.save_pretrained(subfolder)
    weights_name = "adapter_model.safetensors" if snapshot.kind == "lora" else "model.safetensors"
    digests = {f"{subfolder.name}/{weights_name}": write_safetensors(subfolder / weights_name, snapshot.weights)}
    check_fault()  # an injected checkpoint fault fires mid-write, after the weights
    digests["optimizer.pt"] = write_torch(folder / "optimizer.pt", snapshot.optimizer)
    digests["scheduler.pt"] = write_torch(folder / "scheduler.pt", snapshot.scheduler)
    if snapshot.scaler is not None:
        digests["scaler.pt"] = write_torch(folder / "scaler.pt", snapshot.scaler)
    digests["rng.pt"] = write_torch(folder / "rng.pt", snapshot.rng)
    return digests


# --- host copies -----------------------------------------------------------------------------------


def state_bytes(value: Any) -> int:
    """Bytes of every tensor in a nested state (dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(v) for v in value)
    return 0


class HostBuffers:
    """Host copies of device state: one slab of host memory (pinned on CUDA, so the copies run at full
    bus speed; one allocation, since pinning is slow and the pinned allocator rounds each block up to a
    power of two), cut into a view per tensor. Allocated by `prepare` (ahead of the first save, or at
    it) and reused by every later save of the same shapes."""

    ALIGN = 64

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.layout: list[tuple[tuple[int, ...], torch.dtype]] = []
        self.views: list[torch.Tensor] = []
        self.slab: torch.Tensor | None = None

    def prepare(self, value: Any) -> None:
        """Buffers for the tensors of `value` (dicts, lists, tuples of tensors and other leaves)."""
        self.allocate(layout_of(value))

    def allocate(self, layout: list[tuple[tuple[int, ...], torch.dtype]]) -> None:
        """Buffers for tensors of these shapes and dtypes, in this order (a no-op when they are the current ones)."""
        if layout == self.layout:
            return
        self.slab, self.views, self.layout = None, [], []
        offsets, total = [], 0
        for shape, dtype in layout:
            offsets.append(total)
            total += -(-_numel(shape) * dtype.itemsize // self.ALIGN) * self.ALIGN
        slab = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=self.pin)
        raw = slab.numpy()
        # Each view gets a storage of its own over its part of the slab (frombuffer): torch.save writes a
        # tensor's whole storage, and a slice of the slab would drag the slab along into every file.
        self.views = [
            torch.frombuffer(raw[offset : offset + _numel(shape) * dtype.itemsize], dtype=torch.uint8)
            .view(dtype)
            .view(shape)
            if _numel(shape)
            else torch.empty(shape, dtype=dtype)
            for offset, (shape, dtype) in zip(offsets, layout)
        ]
        self.slab, self.layout = slab, layout

    def copy(self, value: Any) -> Any:
        """`value` with every tensor copied into its buffer; other leaves deep-copied."""
        self.prepare(value)
        views = iter(self.views)

        def rebuild(item: Any) -> Any:
            if isinstance(item, torch.Tensor):
                view = next(views)
                view.copy_(item.detach(), non_blocking=self.pin)
                return view
            if isinstance(item, dict):
                return {key: rebuild(inner) for key, inner in item.items()}
            if isinstance(item, (list, tuple)):
                items = [rebuild(inner) for inner in item]
                return items if isinstance(item, list) else tuple(items)
            return copy.deepcopy(item)

        return rebuild(value)

    @property
    def nbytes(self) -> int:
        return 0 if self.slab is None else self.slab.numel()


def layout_of(value: Any) -> list[tuple[tuple[int, ...], torch.dtype]]:
    return [(tuple(t.shape), t.dtype) for t in _tensors(value)]


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a nested state, in the order `HostBuffers.copy` visits them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for inner in value.values() for t in _tensors(inner)]
    if isinstance(value, (list, tuple)):
        return [t for inner in value for t in _tensors(inner)]
    return []


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def host_room(needed: int, capped: bool) -> str | None:
    """None when `needed` bytes of host memory can be taken now; else why not."""
    import psutil

    available = psutil.virtual_memory().available
    if available < needed + HOST_MARGIN_BYTES:
        return (
            f"the snapshot needs {needed / 2**30:.1f} GiB of host memory and {available / 2**30:.1f} GiB is available"
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if capped and soft != resource.RLIM_INFINITY:
        room = soft - memory.vm_size()
        if room < needed + HOST_MARGIN_BYTES:
            return f"the snapshot needs {needed / 2**30:.1f} GiB and host_mem_cap leaves {room / 2**30:.1f} GiB"
    return None


# --- the background save ---------------------------------------------------------------------------


@dataclass
class SaveOutcome:
    """What became of one save, told on the main thread (only it writes events)."""

    step: int
    stall: float
    write_seconds: float = 0.0
    saved: checkpoints.Checkpoint | None = None
    error: BaseException | None = None
    crashes: list[str] = field(default_factory=list)
    waited: bool = False  # the loop waited for the write (a stop, the end of the run)


class Checkpointer:
    """When to save, and saving: snapshot on the main thread, write on a background one (rank 0)."""

    def __init__(self, attempt: Attempt, training: Training | None = None) -> None:
        """`training`: the objects a snapshot copies (None: a checkpointer that only writes the snapshots it is given)."""
        self.attempt = attempt
        self.training = training
        config = attempt.config
        self.group = attempt.group
        self.asynchronous = bool(config.checkpoint_async)
        self.buffers = HostBuffers(pin=attempt.device.type == "cuda")
        self.thread: threading.Thread | None = None
        self.outcome: SaveOutcome | None = None
        self.committed_step = attempt.state.checkpoint_step
        self.skipped = 0
        self.auto = config.checkpoint_every == checkpoint_policy.AUTO
        self.interval: checkpoint_policy.Interval | None = None
        self.last_save_step = attempt.state.step
        self.last_save_time = time.perf_counter()
        self.allocating: threading.Thread | None = None
        self.boundary: float | None = None  # the end of the last step boundary (clock of the step loop)
        self.train_seconds = 0.0
        self.timed_steps = 0

    # --- when ---

    def announce(self) -> None:
        """At the start of training: the interval in force when the config sets it."""
        config = self.attempt.config
        if not self.auto:
            every = f"every {config.checkpoint_every} steps"
            extra = f" and every {config.checkpoint_every_seconds:g} s" if config.checkpoint_every_seconds else ""
            self.attempt.report.event(
                checkpoint_policy.INTERVAL_EVENT,
                f"checkpoint {every}{extra} (set in the config)",
                steps=config.checkpoint_every,
                seconds=config.checkpoint_every_seconds,
                rule="config",
            )

    def due(self, step: int) -> bool:
        """Whether to save after `step` (the same answer on every rank: rank 0 decides)."""
        now = time.perf_counter()
        if self.boundary is not None:
            self.train_seconds += now - self.boundary
            self.timed_steps += 1
        else:
            self.allocate_ahead()
        self.boundary = now
        answer = False
        if self.group.is_main:
            self.poll()
            config = self.attempt.config
            since = now - self.last_save_time
            if not self.auto:
                answer = step % config.checkpoint_every == 0
            elif self.interval is None:
                answer = since >= checkpoint_policy.FIRST_SAVE_SECONDS
            else:
                answer = step - self.last_save_step >= self.interval.steps
            if config.checkpoint_every_seconds and since >= config.checkpoint_every_seconds:
                answer = True
        return bool(distributed.broadcast(self.group, answer))

    # --- saving ---

    def save(self, wait: bool) -> None:
        """Checkpoint the current step. `wait`: also until it is on disk (stop, end of run), and not
        again if it already is; otherwise the write goes on in the background, or the save is skipped
        while the previous one is still writing."""
        attempt = self.attempt
        step = attempt.state.step
        if wait:
            self.wait()
            committed = distributed.broadcast(self.group, self.committed_step)
            attempt.state.checkpoint_step = committed
            if committed == step:
                return
        else:
            if distributed.broadcast(self.group, self.group.is_main and self.busy()):
                self.skipped += 1
                return
        attempt.report.beat("checkpoint")
        started = time.perf_counter()
        snapshot = self._snapshot()
        attempt.state.checkpoint_step = step
        self.last_save_step, self.last_save_time = step, time.perf_counter()
        if snapshot is not None:
            if self.asynchronous:
                self.thread = threading.Thread(
                    target=self._write,
                    args=(snapshot, time.perf_counter() - started),
                    name="checkpoint-writer",
                    daemon=True,
                )
                self.thread.start()
            else:
                self._write(snapshot, 0.0)
            if wait or not self.asynchronous:
                if self.thread is not None:
                    self.thread.join()
                    self.thread = None
                if self.outcome is not None:  # the loop waited for all of it: that is its stall
                    self.outcome.stall = time.perf_counter() - started
                    self.outcome.waited = True
                self.wait()
        if wait:
            attempt.state.checkpoint_step = distributed.broadcast(self.group, self.committed_step)
        if self.boundary is not None:
            self.boundary = time.perf_counter()
        attempt.report.beat("between_steps")

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self) -> None:
        """Rank 0: until the save in flight is on disk (or failed), then tell what became of it."""
        if self.thread is not None:
            self.attempt.report.beat("checkpoint")
            self.thread.join()
            self.thread = None
        self.poll()

    def wait_quietly(self) -> None:
        """After a failure of the loop: let the write in flight finish; its errors do not hide the failure,
        and the failure's report still names the phase it happened in."""
        phase = self.attempt.report.phase
        try:
            self.wait()
        except BaseException:
            pass
        self.attempt.report.phase = phase

    def _snapshot(self) -> Snapshot | None:
        """The collectives on every rank, then rank 0's snapshot (None elsewhere)."""
        attempt = self.attempt
        training = self.training
        assert training is not None, "a snapshot needs the objects being trained"

        full_weights = distributed.full_model_state(training.wrapped, training.model, attempt.plan)
        optimizer_state = distributed.optimizer_state(training.wrapped, training.optimizer, attempt.plan)
        rng_states = distributed.gather_objects(self.group, rng_state())
        if not self.group.is_main:
            return None
        is_lora = attempt.plan.lora
        state = self._live_state(full_weights, optimizer_state)
        if is_lora:
            lora_config = copy.deepcopy(training.model.peft_config["default"])
            lora_config.inference_mode = True  # as PeftModel.save_pretrained writes it
            model_files = [lora_config]
        else:
            model_config = copy.deepcopy(training.model.config)
            model_config.architectures = [type(training.model).__name__]
            model_files = [model_config]
            generation = getattr(training.model, "generation_config", None)
            if generation is not None:
                model_files.append(copy.deepcopy(generation))
        if self.allocating is not None:
            self.allocating.join()
            self.allocating = None
        if self.asynchronous and self.buffers.slab is None:
            self._check_room(state)
        if self.asynchronous:
            try:
                if attempt.device.type == "cuda":
                    torch.cuda.synchronize(attempt.device)  # the optimizer's kernels (and paged moments) are done
                state = self.buffers.copy(state)
                if attempt.device.type == "cuda":
                    torch.cuda.synchronize(attempt.device)  # the copies into pinned memory are done
            except RuntimeError as error:  # pinned memory refused: the snapshot does not fit after all
                self.asynchronous = False
                self.buffers = HostBuffers(pin=False)
                attempt.report.event(
                    "checkpoint_sync",
                    f"checkpoints are written synchronously: host copy failed ({str(error).splitlines()[0][:200]})",
                )
        base = self._lora_base() if is_lora else None
        manifest = {
            "kind": "lora" if is_lora else "full",
            "base": base,
            "samples_consumed": attempt.state.samples_consumed,
            "epoch": training.order.epoch_of(attempt.state.samples_consumed),
            "seed": attempt.config.seed,
            "plan": attempt.plan.to_dict(),
            "config_hash": attempt.config.config_hash(),
            "run_id": attempt.run_id,
        }
        scaler = training.scaler.state_dict() if training.scaler is not None else None
        return Snapshot(
            attempt.state.step,
            "lora" if is_lora else "full",
            state["weights"],
            model_files,
            state["optimizer"],
            copy.deepcopy(training.scheduler.state_dict()),
            copy.deepcopy(scaler),
            {"ranks": rng_states} if self.group.distributed else rng_states[0],
            manifest,
            state_bytes(state),
        )

    def _live_state(self, full_weights: dict[str, torch.Tensor] | None, optimizer_state: Any) -> dict[str, Any]:
        """The weights (or adapters) and optimizer state to snapshot, as references to the live tensors."""
        model = self.training.model
        if self.attempt.plan.lora:
            from peft import get_peft_model_state_dict

            weights = get_peft_model_state_dict(model)
        else:
            weights = full_weights if full_weights is not None else model.state_dict()
        return {"weights": unique_tensors(weights), "optimizer": optimizer_state}

    def _check_room(self, state: dict[str, Any]) -> None:
        """Go synchronous, with an event, when a snapshot of `state` does not fit the host memory."""
        needed = state_bytes(state)
        why_not = host_room(needed, bool(self.attempt.config.host_mem_cap))
        if why_not:
            self.asynchronous = False
            self.attempt.report.event(
                "checkpoint_sync", f"checkpoints are written synchronously: {why_not}", needed=needed
            )

    def allocate_ahead(self) -> None:
        """After the attempt's first step (the optimizer state exists now): pin the host buffers in a
        thread, so the first save does not stall for the allocation. Not with FSDP over several ranks
        (its full state only exists inside the gathering collectives)."""
        attempt = self.attempt
        training = self.training
        assert training is not None, "a snapshot needs the objects being trained"
        if not (self.asynchronous and self.group.is_main and self.buffers.slab is None and self.allocating is None):
            return
        if attempt.plan.parallel == "fsdp" and attempt.plan.world_size > 1:
            return
        state = self._live_state(None, training.optimizer.state_dict())
        self._check_room(state)
        if self.asynchronous:
            self.allocating = threading.Thread(
                target=self._allocate, args=(layout_of(state),), name="checkpoint-buffers", daemon=True
            )
            self.allocating.start()

    def _allocate(self, layout: list[tuple[tuple[int, ...], torch.dtype]]) -> None:
        try:
            self.buffers.allocate(layout)
        except RuntimeError:  # refused: the first save finds no buffers and tries (and tells) itself
            self.buffers = HostBuffers(pin=self.buffers.pin)

    def _lora_base(self) -> str | None:
        """A LoRA checkpoint names its frozen base when the base lives in this run (random init, or
        weights trained before LoRA); otherwise the base is the configured model."""
        run_dir = self.attempt.run_dir.resolve()
        base_path = Path(self.training.base).resolve()
        return os.path.relpath(base_path, run_dir) if run_dir in base_path.parents else None

    def _write(self, snapshot: Snapshot, stall: float) -> None:
        """Write and commit one snapshot (the background thread, or the main one when synchronous)."""
        attempt = self.attempt
        outcome = SaveOutcome(snapshot.step, stall)
        started = time.perf_counter()

        def check_fault() -> None:
            attempt.faults.check("checkpoint", snapshot.step, attempt.plan.micro_batch_size)

        for _ in range(WRITE_ATTEMPTS):
            try:
                outcome.saved = checkpoints.save(
                    attempt.run_dir,
                    snapshot.step,
                    lambda folder: write_snapshot(folder, snapshot, check_fault),
                    snapshot.manifest,
                    attempt.config.keep_checkpoints,
                )
                outcome.error = None
                break
            except BaseException as error:  # told on the main thread: a full disk, or a crash and a retry
                outcome.error = error
                if _disk_full(error):
                    break
                outcome.crashes.append(
                    f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
                )
        outcome.write_seconds = time.perf_counter() - started
        self.outcome = outcome

    def poll(self) -> None:
        """Rank 0, main thread: events for a save that finished; a writer that failed twice raises here."""
        outcome = self.outcome
        if outcome is None or self.busy():
            return
        self.outcome = None
        attempt = self.attempt
        for number, crash in enumerate(outcome.crashes, start=1):
            retried = number < WRITE_ATTEMPTS
            attempt.report.event(
                "checkpoint_writer_crashed",
                f"checkpoint step {outcome.step}: the writer failed ({crash}); "
                + (
                    "retrying from the same snapshot"
                    if retried
                    else "giving up: the attempt ends and resumes from the previous checkpoint"
                ),
                step=outcome.step,
                error=crash,
                retried=retried,
            )
        if outcome.error is not None:
            if not _disk_full(outcome.error):
                raise outcome.error
            final = outcome.step == attempt.total_steps
            attempt.report.event(
                "checkpoint_failed",
                f"disk full while writing checkpoint step {outcome.step}: the partial checkpoint was removed, "
                f"step {self.committed_step or 0} stays the newest; "
                + ("the run cannot finish without its final checkpoint" if final else "training continues"),
                step=outcome.step,
                error=str(outcome.error),
            )
            if final:
                raise outcome.error
            return
        assert outcome.saved is not None
        self.committed_step = outcome.step
        skipped, self.skipped = self.skipped, 0
        if self.asynchronous and outcome.waited:
            message = (
                f"checkpoint step {outcome.step} saved in {outcome.stall:.2f} s "
                f"(the last one: training waited for its {outcome.write_seconds:.2f} s write)"
            )
        elif self.asynchronous:
            message = (
                f"checkpoint step {outcome.step} saved in {outcome.stall:.2f} s of training "
                f"(written in the background in {outcome.write_seconds:.2f} s)"
            )
        else:
            message = f"checkpoint step {outcome.step} saved in {outcome.stall:.2f} s (synchronous)"
        if skipped:
            message += f"; {skipped} save(s) skipped while it was writing"
        attempt.report.event(
            "checkpoint",
            message,
            step=outcome.step,
            path=str(outcome.saved.path),
            seconds=outcome.stall,
            stall=outcome.stall,
            write_seconds=outcome.write_seconds,
            asynchronous=self.asynchronous,
            bytes=_folder_bytes(outcome.saved.path),
            skipped=skipped,
            waited=outcome.waited,
        )
        if self.auto and self.interval is None:
            self._choose_interval(outcome)

    def _choose_interval(self, outcome: SaveOutcome) -> None:
        attempt = self.attempt
        step_seconds = self.train_seconds / self.timed_steps if self.timed_steps else 1.0
        stall = outcome.stall  # synchronous: the write included
        mtbf = checkpoint_policy.mean_time_between_failures(attempt.report.db.attempts(attempt.run_id), time.time())
        self.interval = checkpoint_policy.choose_interval(
            stall, outcome.write_seconds if self.asynchronous else 0.0, step_seconds, mtbf
        )
        attempt.report.event(
            checkpoint_policy.INTERVAL_EVENT,
            f"checkpoint every {self.interval.steps} steps (~{self.interval.seconds:.0f} s, auto): {self.interval.reason}; "
            f"measured {stall:.2f} s stall and {outcome.write_seconds:.1f} s write per save, {step_seconds:.3f} s per step",
            steps=self.interval.steps,
            seconds=self.interval.seconds,
            rule=self.interval.reason,
            stall=stall,
            write_seconds=outcome.write_seconds,
            step_seconds=step_seconds,
            mtbf_seconds=mtbf,
        )


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- resuming ----------------------------------------------------------------------------------------
