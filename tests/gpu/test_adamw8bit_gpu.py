"""tamer's Triton 8-bit AdamW step against bitsandbytes' CUDA kernels, on the GPU: the CPU test's checks
(tests/unit/test_adamw8bit.py), compiled for the card, plain and paged (moments in CUDA managed memory)."""

from __future__ import annotations

import pytest

from tests.unit.test_adamw8bit import check, compare


@pytest.mark.gpu
@pytest.mark.parametrize("paged", [False, True])
def test_triton_step_matches_bitsandbytes_on_cuda(paged: bool) -> None:
    results = compare("cuda", paged)
    check(results)
    assert results["paged"] == [False] * 4 + [paged]
