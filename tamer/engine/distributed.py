"""Several processes training one run (launched by torchrun): who am I, the collectives the trainer
needs, wrapping the model (DDP or FSDP2) and moving its state in and out of checkpoints.

With one process every function here is a no-op or the identity, so the trainer reads the same
either way. Rules the trainer keeps: every rank runs the same collectives in the same order (a rank
that skips one leaves the others waiting, the known deadlock); only rank 0 writes the database and
checkpoints; every rank resumes the same checkpoint and cursor.

Checkpoints have one format whatever the parallelism: full model weights (`save_pretrained`) and the
optimizer state keyed by the index of each trainable parameter, as `optimizer.state_dict()` gives it
in one process. A run that escalates from DDP to FSDP therefore resumes its optimizer state exactly.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tamer.engine.loss import decoder_layers
from tamer.plan import Plan


@dataclass(frozen=True)
class Group:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Group:
    """This process's place in the group, from torchrun's environment (one process when unset)."""
    return Group(
        int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    )


def init(group: Group, device: torch.device, backend: str, timeout: float) -> None:
    """Join the process group (torchrun's rendezvous variables name it)."""
    if not group.distributed or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout)}
    if device.type == "cuda":
        kwargs["device_id"] = device  # eager NCCL init: a broken rank fails here, not at the first step
    dist.init_process_group(backend, **kwargs)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(group: Group) -> None:
    if group.distributed:
        dist.barrier()


def broadcast(group: Group, value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not group.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device(device: torch.device) -> torch.device:
    """Where a small collective's tensor lives: `device`, but the host under gloo, whose CUDA support stops at
    all_reduce and broadcast (two ranks sharing one GPU, where NCCL refuses, run over gloo)."""
    return torch.device("cpu") if dist.get_backend() == "gloo" else device


def all_sum(group: Group, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks, in float64."""
    if not group.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(group: Group, values: list[int | None], device: torch.device) -> list[list[int | None]]:
    """Every rank's `values` (integers or None), in rank order."""
    if not group.distributed:
        return [values]
    tensor = torch.tensor(
        [-1 if v is None else int(v) for v in values], dtype=torch.int64, device=_collective_device(device)
    )
    out = [torch.empty_like(tensor) for _ in range(group.world_size)]
    dist.all_gather(out, tensor)
    return [[None if v < 0 else int(v) for v in row.tolist()] for row in out]


def gather_objects(group: Group, value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order."""
    if not group.distributed:
        return [value]
    out: list[Any] = [None] * group.world_size
    dist.all_gather_object(out, value)
    return out


def shard_of(group: Group, items: list[int]) -> list[int]:
    """This rank's contiguous share of one optimizer step's samples (the step's order is kept: rank r
    trains what micro-batches r*k .. of one process would)."""
    if not group.distributed:
        return items
    size = len(items) // group.world_size
    return items[group.rank * size : (group.rank + 1) * size]


def wrap(module: torch.nn.Module, plan: Plan, device: torch.device, group: Group) -> torch.nn.Module:
    """`module` (the loss module around the model) as the plan trains it: as is, under DDP, or sharded."""
    if not group.distributed:
        return module
    if plan.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(module):
            fully_shard(layer)
        fully_shard(module)  # the root: embeddings, final norm and the (tied) head
        return module
    from torch.nn.parallel import DistributedDataParallel

    # Gradients that exist when DDP is built become views into its all-reduce buckets at once (the
    # trainer then zeroes them in place, never to None): one copy of the gradients, from the first step on.
    for parameter in module.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    # init_sync=False: every rank built the same weights from the same files and seed. Buffers (rotary
    # frequencies) are constants: no broadcast before each forward.
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        broadcast_buffers=False,
        init_sync=False,
    )


@contextlib.contextmanager
def gradient_sync(wrapped: torch.nn.Module, plan: Plan, sync: bool) -> Iterator[None]:
    """Accumulating micro-batches skip the gradient all-reduce / reduce-scatter; the last one syncs."""
    if plan.world_size > 1 and plan.parallel == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    with wrapped.no_sync() if plan.world_size > 1 and plan.parallel == "ddp" and not sync else contextlib.nullcontext():
        yield


def full_model_state(wrapped: torch.nn.Module, inner: torch.nn.Module, plan: Plan) -> dict[str, torch.Tensor] | None:
    """For FSDP: the whole model's weights gathered on rank 0 (in CPU memory), keyed as `inner`'s
    state_dict; None on other ranks. Every rank must call it. Not needed otherwise (None)."""
    if plan.parallel != "fsdp" or plan.world_size < 2:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:
        return None
    prefix = _prefix(wrapped, inner)
    seen: set[int] = set()
    tied = set()  # second names of shared parameters (the tied head): saved once, as save_pretrained would
    for name, parameter in inner.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            tied.add(name)
        seen.add(id(parameter))
    return {
        key[len(prefix) :]: value
        for key, value in full.items()
        if key.startswith(prefix) and key[len(prefix) :] not in tied
    }


def optimizer_state(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: Plan) -> dict[str, Any] | None:
    """The optimizer state in the one-process format (keyed by trainable-parameter index), on rank 0;
    None on other ranks. Every rank must call it."""
    if plan.parallel != "fsdp" or plan.world_size < 2:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(
        wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not full:
        return None
    index = parameter_names(wrapped)
    return {
        "state": {index[fqn]: value for fqn, value in full["state"].items()},
        "param_groups": [
            {**group, "params": [index[fqn] for fqn in group["params"]]} for group in full["param_groups"]
        ],
    }


def load_optimizer_state(
    wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: Plan, state: dict[str, Any]
) -> None:
    """Load a one-process-format optimizer state (every rank passes the same one)."""
    if plan.parallel != "fsdp" or plan.world_size < 2:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names: dict[int, str] = {}
    for name, i in parameter_names(wrapped).items():
        names.setdefault(i, name)
    full = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(wrapped, optimizer, optim_state_dict=full, options=StateDictOptions(full_state_dict=True))


def parameter_names(wrapped: torch.nn.Module) -> dict[str, int]:
    """Every name of each trainable parameter (tied ones have two) -> its index among
    `[p for p in wrapped.parameters() if p.requires_grad]`, the order the optimizer holds them in."""
    order = {id(p): i for i, p in enumerate(p for p in wrapped.parameters() if p.requires_grad)}
    return {name: order[id(p)] for name, p in wrapped.named_parameters(remove_duplicate=False) if id(p) in order}


def _prefix(wrapped: torch.nn.Module, inner: torch.nn.Module) -> str:
    for name, module in wrapped.named_modules():
        if module is inner:
            return name + "." if name else ""
    raise ValueError("the model is not inside the wrapped module")


@contextlib.contextmanager
def main_first(group: Group) -> Iterator[None]:
    """Rank 0 runs the block first (it writes shared files: the tokenized cache, the random init, a
    pinned base); the other ranks run it after, and find those files written."""
    if group.distributed and not group.is_main:
        dist.barrier()
    yield
    if group.distributed and group.is_main:
        dist.barrier()
