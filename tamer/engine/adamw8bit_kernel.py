"""The Triton kernel of tamer.engine.adamw8bit (its own module: Triton resolves a kernel's helpers among
module globals, and importing triton is left to the first CUDA step). Adapted from bitsandbytes'
Triton back end (bitsandbytes/backends/triton/kernels_optim.py, MIT licence)."""

import triton
import triton.language as tl


@triton.jit
def nearest(x, mids_ptr):
    # index of the nearest code = how many midpoints between consecutive codes lie below x
    index = tl.zeros(x.shape, dtype=tl.int32)
    for shift in tl.static_range(7, -1, -1):
        candidate = index + (1 << shift)
        index = tl.where(x > tl.load(mids_ptr + candidate - 1), candidate, index)
    return index


@triton.jit
def adamw8bit(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    qm_ptr,
    qv_ptr,
    mids_m_ptr,
    mids_v_ptr,
    am_ptr,
    av_ptr,
    scale_ptr,
    n,
    lr,
    beta1,
    beta2,
    eps,
    decay,
    correction1,
    correction2,
    HAS_SCALE: tl.constexpr,
    QBLOCK: tl.constexpr,
    BLOCKS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    offsets = rows[:, None] * QBLOCK + tl.arange(0, QBLOCK)[None, :]
    mask = offsets < n
    row_mask = rows * QBLOCK < n
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    # as bitsandbytes' CUDA kernel: a NaN or infinite gradient element leaves its weight as it was and restarts
    # its moments at 0, so one bad element does not poison its block's absmax and every later step
    finite = tl.abs(g) <= 3.4028234663852886e38
    if HAS_SCALE:
        g = g * tl.load(scale_ptr)
    p = tl.load(p_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    m_codes = tl.load(m_ptr + offsets, mask=mask, other=0).to(tl.int32)
    v_codes = tl.load(v_ptr + offsets, mask=mask, other=0).to(tl.int32)
    m_absmax = tl.load(am_ptr + rows, mask=row_mask, other=0.0)
    v_absmax = tl.load(av_ptr + rows, mask=row_mask, other=0.0)
    m = tl.load(qm_ptr + m_codes) * m_absmax[:, None]
    v = tl.load(qv_ptr + v_codes) * v_absmax[:, None]
    m = tl.where(mask & finite, m * beta1 + (1.0 - beta1) * g, 0.0)
    v = tl.where(mask & finite, v * beta2 + (1.0 - beta2) * g * g, 0.0)
    stepped = p * (1.0 - lr * decay) - (lr / correction1) * (m / (tl.sqrt(v) / correction2 + eps))
    p = tl.where(finite, stepped, p)
    tl.store(p_ptr + offsets, p.to(p_ptr.dtype.element_ty), mask=mask)
    m_absmax = tl.max(tl.abs(m), axis=1)
    v_absmax = tl.max(v, axis=1)
    m_codes = nearest(m / tl.where(m_absmax == 0.0, 1.0, m_absmax)[:, None], mids_m_ptr)
    v_codes = nearest(v / tl.where(v_absmax == 0.0, 1.0, v_absmax)[:, None], mids_v_ptr)
    tl.store(m_ptr + offsets, m_codes.to(tl.uint8), mask=mask)
    tl.store(v_ptr + offsets, v_codes.to(tl.uint8), mask=mask)
    tl.store(am_ptr + rows, m_absmax, mask=row_mask)
    tl.store(av_ptr + rows, v_absmax, mask=row_mask)
