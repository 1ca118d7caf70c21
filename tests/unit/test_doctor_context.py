"""`tamer doctor`'s torch half measures the CUDA context's cost through NVML in a fresh process: it must
initialise NVML there (without nvmlInit every query fails, and the cost read as unknown on an H200)."""

from __future__ import annotations

import sys
import types

from tamer.engine import doctor


def fake_nvml(used: int) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    state = {"initialised": False}

    def init() -> None:
        state["initialised"] = True

    def handle(uuid: str) -> str:
        if not state["initialised"]:
            raise RuntimeError("NVML_ERROR_UNINITIALIZED")
        return uuid

    module.nvmlInit = init
    module.nvmlDeviceGetHandleByUUID = handle
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=used, total=2 * used, free=used)
    return module


def test_nvml_used_initialises_nvml_in_its_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(123_456_789))
    assert doctor._nvml_used("GPU-0") == 123_456_789


def test_nvml_used_is_none_when_nvml_fails(monkeypatch):
    broken = fake_nvml(1)
    broken.nvmlInit = lambda: (_ for _ in ()).throw(RuntimeError("NVML_ERROR_LIBRARY_NOT_FOUND"))
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert doctor._nvml_used("GPU-0") is None
