"""bitsandbytes' 8-bit AdamW, stepped by one Triton kernel per tensor instead of bitsandbytes' CUDA kernels.

Why: on the planner's 1B plan the optimizer step was 0.041-0.044 s of a 0.113 s step on an H200
(bench/results/optimizer-step-h200-2026-12-03.md): bitsandbytes' block-wise 8-bit kernels move ~20 GB in
~35 ms, ~0.6 TB/s on a ~4.8 TB/s card, and the optimizer waits for the device after every tensor. The
kernel here does the same arithmetic in one pass per tensor (load weight, gradient and 8-bit moments;
update; store weight; re-quantise the moments), with the quantisation search over a table of code midpoints,
and the step does not wait for the device.

The optimizer IS bitsandbytes' `AdamW8bit` / `PagedAdamW8bit` (subclassed): same state layout (`state1`/
`state2` uint8 codes, `qmap1`/`qmap2` the dynamic maps, `absmax1`/`absmax2` per block of 256, fp32 moments
for tensors under `min_8bit_size`), same paging, same `state_dict`. A checkpoint written by one loads into
the other, so a run may resume on a machine without Triton. Only tensors with 8-bit moments take the
Triton kernel; the small ones (norm weights) keep bitsandbytes' 32-bit update.

Arithmetic: as bitsandbytes' CPU and Triton back ends (decoupled weight decay before the Adam update,
nearest code by value); a NaN or infinite gradient element is skipped as bitsandbytes' CUDA kernel skips it
(its weight kept, its moments restarted at 0; the CPU and Triton back ends let it poison the block). The
block-wise layout and the dynamic maps are bitsandbytes'; the kernel is adapted from its Triton back end
(bitsandbytes/backends/triton/kernels_optim.py, MIT licence).

`grad_scale` (a one-element device tensor set before `step`) multiplies every gradient inside the kernel:
gradient clipping without a pass that rewrites the gradients and without reading the norm on the host.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

BITSANDBYTES_INTERNALS = (
    "initialized",
    "check_overrides",
    "to_gpu",
    "init_state",
    "prefetch_state",
    "get_config",
    "update_step",
    "is_paged",
)
"""What the Triton step uses of bitsandbytes' Optimizer8bit beyond its public API (tested with bitsandbytes 0.50.x).
Checked once, when the optimizer is built: a bitsandbytes without one of them steps with its own kernels instead,
and says why (`fallback_reason`)."""
QUANT_BLOCK = 256
"""Elements per absmax block (bitsandbytes' block-wise optimizers use 256)."""
BLOCKS_PER_PROGRAM = 4
NUM_WARPS = 4


def unavailable(device: torch.device) -> str | None:
    """Why the Triton step cannot run on `device` (None: it can)."""
    if device.type != "cuda":
        return "the Triton 8-bit step runs on CUDA devices only"
    if torch.cuda.get_device_capability(device) < (7, 0):
        return "Triton needs a GPU of compute capability 7.0 or newer"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def _kernel() -> Any:
    """The kernel, imported at first use (importing triton is slow, and CPU runs never need it)."""
    from tamer.engine.adamw8bit_kernel import adamw8bit  # imports triton: seconds, and CPU runs never need it

    return adamw8bit


def midpoints(code: torch.Tensor) -> torch.Tensor:
    """The 255 midpoints between consecutive entries of a sorted 256-entry code (the search table)."""
    return (code[:-1] + code[1:]) / 2


def update_8bit(
    parameter: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, Any],
    config: dict[str, Any],
    mids: tuple[torch.Tensor, torch.Tensor],
    grad_scale: torch.Tensor | None,
) -> None:
    """One AdamW step of one tensor with 8-bit block-wise moments, in place (weights, codes, absmax)."""
    step = state["step"]
    beta1, beta2 = config["betas"][0], config["betas"][1]
    n = parameter.numel()
    grid = (-(-n // (QUANT_BLOCK * BLOCKS_PER_PROGRAM)),)
    _kernel()[grid](
        parameter,
        grad,
        state["state1"],
        state["state2"],
        state["qmap1"],
        state["qmap2"],
        mids[0],
        mids[1],
        state["absmax1"],
        state["absmax2"],
        grad_scale if grad_scale is not None else state["absmax1"],
        n,
        float(config["lr"]),
        float(beta1),
        float(beta2),
        float(config["eps"]),
        float(config["weight_decay"]),
        1.0 - beta1**step,
        (1.0 - beta2**step) ** 0.5,
        HAS_SCALE=grad_scale is not None,
        QBLOCK=QUANT_BLOCK,
        BLOCKS=BLOCKS_PER_PROGRAM,
        num_warps=NUM_WARPS,
    )


def triton_adamw8bit(paged: bool) -> type[torch.optim.Optimizer]:
    """bitsandbytes' AdamW8bit (or PagedAdamW8bit) whose 8-bit tensors are stepped by the Triton kernel."""
    import bitsandbytes as bnb

    base = bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit

    class TritonAdamW8bit(base):  # type: ignore[misc, valid-type]
        triton_step = True
        fallback_reason: str | None = None
        """Set when the kernel could not be built or launched (e.g. a Triton that does not support the card:
        Triton lists compute capability 8.0+, a T4 is 7.5): the step then runs bitsandbytes' kernels on the
        same state, for the rest of the process, and the trainer records why."""
        prefetch_every_step = False
        """bitsandbytes prefetches every paged moment before every step: ~290 driver calls that held the host
        ~20 ms per step on an H200 (the 8-bit step took 26 ms paged vs 16 ms not). Here the moments are
        prefetched at the first step of the optimizer (after a build or a load); pages the driver evicts later
        under memory pressure come back when the kernel touches them."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.grad_scale: torch.Tensor | None = None
            self._mids: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
            missing = [name for name in BITSANDBYTES_INTERNALS if not hasattr(self, name)]
            self.own_step = bool(missing)
            if missing:
                self.fallback_reason = (
                    f"bitsandbytes {getattr(bnb, '__version__', '?')} has no {', '.join(missing)} (the Triton "
                    "step is tested with 0.50.x): its own step runs"
                )

        def _midpoints(self, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            device = state["qmap1"].device
            if device not in self._mids:
                self._mids[device] = (midpoints(state["qmap1"]).contiguous(), midpoints(state["qmap2"]).contiguous())
            return self._mids[device]

        def load_state_dict(self, state_dict: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            super().load_state_dict(state_dict, *args, **kwargs)
            self._prefetched = False

        @torch.no_grad()
        def step(self, closure=None):  # noqa: ANN001, ANN201
            """bitsandbytes' step without its wait for the device after every tensor (the kernels queue
            on one stream; a paged optimizer's prefetches are on it too). `grad_scale`, when set, scales
            every gradient (the 32-bit ones in place, the 8-bit ones inside the kernel) and is cleared."""
            if self.own_step:  # a bitsandbytes whose internals differ: its own step, gradients scaled first
                if self.grad_scale is not None:
                    for group in self.param_groups:
                        for parameter in group["params"]:
                            if parameter.grad is not None:
                                parameter.grad.mul_(self.grad_scale)
                    self.grad_scale = None
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            scale, self.grad_scale = self.grad_scale, None
            prefetch = self.prefetch_every_step or not getattr(self, "_prefetched", False)
            self._prefetched = True
            for gindex, group in enumerate(self.param_groups):
                for pindex, parameter in enumerate(group["params"]):
                    if parameter.grad is None:
                        continue
                    state = self.state[parameter]
                    if len(state) == 0:
                        self.init_state(group, parameter, gindex, pindex)
                    if prefetch:
                        self.prefetch_state(parameter)
                    if state["state1"].dtype == torch.uint8 and self.fallback_reason is None:
                        parameter.data = parameter.data.contiguous()
                        parameter.grad = parameter.grad.contiguous()
                        state["step"] += 1
                        try:
                            update_8bit(
                                parameter,
                                parameter.grad,
                                state,
                                self.get_config(gindex, pindex, group),
                                self._midpoints(state),
                                scale,
                            )
                            continue
                        except torch.OutOfMemoryError:
                            raise
                        except Exception as error:  # the kernel raises before it changes anything
                            state["step"] -= 1
                            first_line = (str(error).strip().splitlines() or [""])[0][:300]
                            self.fallback_reason = f"{type(error).__name__}: {first_line}"
                    if scale is not None:
                        parameter.grad.mul_(scale)
                    self.update_step(group, parameter, gindex, pindex)
            return loss

    TritonAdamW8bit.__name__ = TritonAdamW8bit.__qualname__ = "TritonPagedAdamW8bit" if paged else "TritonAdamW8bit"
    return TritonAdamW8bit
