"""Classification of child exits into Outcomes, from real torch / CUDA / kernel message texts."""

from __future__ import annotations

import pytest

from tamer.daemon.classify import classify, detect_oom_kill, read_memory_events
from tamer.outcome import Outcome, parse_oom_message
from tamer.output import one_line

GiB = 1024**3
MiB = 1024**2

NEW_FORMAT = (
    "CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
    "1.38 GiB is free. Including non-PyTorch memory, this process has 15.00 GiB memory in use. Of the "
    "allocated memory 13.92 GiB is allocated by PyTorch, and 598.32 MiB is reserved by PyTorch but "
    "unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
    "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
OLD_FORMAT = (
    "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 14.76 GiB total capacity; 13.45 GiB "
    "already allocated; 11.75 MiB free; 13.80 GiB reserved in total by PyTorch) If reserved memory is >> "
    "allocated memory try setting max_split_size_mb to avoid fragmentation.  See documentation for "
    "Memory Management and PYTORCH_CUDA_ALLOC_CONF"
)
# torch 2.1 wording: "capacty" misspelt, another process listed before this one.
OTHER_PROCESSES_FORMAT = (
    "CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacty of 23.69 GiB of which "
    "7.11 GiB is free. Process 2006998 has 256.00 MiB memory in use. Process 2006999 has 1.00 GiB memory "
    "in use. Including non-PyTorch memory, this process has 16.31 GiB memory in use. Of the allocated "
    "memory 16.01 GiB is allocated by PyTorch, and 7.47 MiB is reserved by PyTorch but unallocated."
)
FRACTION_CAPPED_FORMAT = (
    "CUDA out of memory. Tried to allocate 512 bytes. GPU 0 has a total capacity of 79.19 GiB of which "
    "0 bytes is free. 15.00 GiB allowed; Of the allocated memory 14.99 GiB is allocated by PyTorch, and "
    "2.00 KiB is reserved by PyTorch but unallocated."
)
CUBLAS_ALLOC = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
CUDA_ERROR_OOM = (
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API "
    "call, so the stacktrace below might be incorrect."
)
CPU_ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
    "to allocate 2359296 bytes. Error code 12 (Cannot allocate memory)"
)


def exception_report(exc_type: str, message: str, phase: str = "backward") -> dict:
    return {
        "status": "exception",
        "exc_type": exc_type,
        "message": message,
        "phase": phase,
        "step": 5,
        "micro_batch_size": 8,
        "memory_stats": {"peak_allocated": 14 * GiB},
    }


def test_new_format_sizes_parse_exactly():
    """The torch 2.1+ CUDA OOM sentence yields every size it states, in bytes, plus the derived total."""
    assert parse_oom_message(NEW_FORMAT) == {
        "tried_to_allocate": round(1.96 * GiB),
        "total_capacity": round(79.19 * GiB),
        "free": round(1.38 * GiB),
        "process_in_use": 15 * GiB,
        "allocated_by_pytorch": round(13.92 * GiB),
        "reserved_unallocated": round(598.32 * MiB),
        "reserved_total": round(13.92 * GiB) + round(598.32 * MiB),
    }


def test_old_format_sizes_parse_exactly():
    """The pre-2.1 parenthesised CUDA OOM message yields its sizes, and unallocated is derived."""
    assert parse_oom_message(OLD_FORMAT) == {
        "tried_to_allocate": 20 * MiB,
        "total_capacity": round(14.76 * GiB),
        "free": round(11.75 * MiB),
        "allocated_by_pytorch": round(13.45 * GiB),
        "reserved_total": round(13.80 * GiB),
        "reserved_unallocated": round(13.80 * GiB) - round(13.45 * GiB),
    }


def test_other_processes_are_summed_and_misspelt_capacity_parses():
    """ "Process N has X memory in use" lines add up to other_processes_in_use; "capacty" still parses."""
    sizes = parse_oom_message(OTHER_PROCESSES_FORMAT)
    assert sizes["other_processes_in_use"] == 256 * MiB + 1 * GiB
    assert sizes["process_in_use"] == round(16.31 * GiB)
    assert sizes["total_capacity"] == round(23.69 * GiB)


def test_bytes_kib_and_allowed_parse():
    """Sizes written in bytes and KiB parse, and a set_per_process_memory_fraction cap is `allowed`."""
    sizes = parse_oom_message(FRACTION_CAPPED_FORMAT)
    assert sizes["tried_to_allocate"] == 512
    assert sizes["free"] == 0
    assert sizes["allowed"] == 15 * GiB
    assert sizes["reserved_unallocated"] == 2 * 1024


def test_cpu_allocator_size_parses():
    """The CPU allocator's "you tried to allocate N bytes" gives tried_to_allocate."""
    assert parse_oom_message(CPU_ALLOCATOR) == {"tried_to_allocate": 2359296}


def test_text_without_sizes_parses_to_nothing():
    """A message that states no sizes gives an empty dict rather than guesses."""
    assert parse_oom_message(CUBLAS_ALLOC) == {}


def test_cuda_oom_new_format():
    """OutOfMemoryError with the new text is a cuda_oom that escalates, keeps phase/step and sizes."""
    outcome = classify(1, exception_report("OutOfMemoryError", NEW_FORMAT))
    assert outcome.kind == "cuda_oom"
    assert outcome.escalate and outcome.retryable
    assert (outcome.phase, outcome.step, outcome.micro_batch_size) == ("backward", 5, 8)
    assert outcome.sizes["tried_to_allocate"] == round(1.96 * GiB)
    assert outcome.memory_stats == {"peak_allocated": 14 * GiB}
    assert outcome.exit_code == 1 and outcome.signal is None


def test_cuda_oom_old_format_as_runtime_error():
    """Old torch raised a plain RuntimeError; the message text alone makes it a cuda_oom."""
    outcome = classify(1, exception_report("RuntimeError", OLD_FORMAT, phase="forward"))
    assert outcome.kind == "cuda_oom"
    assert outcome.phase == "forward"
    assert outcome.sizes["reserved_total"] == round(13.80 * GiB)


def test_cuda_oom_message_is_one_line_and_bounded():
    """The Outcome message is a single line of at most 300 characters, while sizes come from the full text."""
    outcome = classify(1, exception_report("OutOfMemoryError", NEW_FORMAT + "\nsecond line"))
    assert "\n" not in outcome.message
    assert len(outcome.message) <= 300
    assert outcome.message.startswith("OutOfMemoryError: CUDA out of memory.")
    assert outcome.sizes["reserved_unallocated"] == round(598.32 * MiB)


@pytest.mark.parametrize(
    "message",
    [
        CUBLAS_ALLOC,
        CUDA_ERROR_OOM,
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "cusolver error: CUSOLVER_STATUS_ALLOC_FAILED, when calling `cusolverDnCreate(handle)`",
    ],
)
def test_library_allocation_failures_are_cuda_oom(message):
    """cuBLAS/cuDNN/cuSOLVER workspace failures and the driver's "out of memory" are CUDA OOMs."""
    outcome = classify(1, exception_report("RuntimeError", message))
    assert outcome.kind == "cuda_oom"
    assert outcome.escalate


def test_cpu_allocator_failure_is_host_oom():
    """The CPU allocator's RuntimeError is a host_oom that escalates, with the size it tried."""
    outcome = classify(1, exception_report("RuntimeError", CPU_ALLOCATOR, phase="load"))
    assert outcome.kind == "host_oom"
    assert outcome.escalate and outcome.retryable
    assert outcome.phase == "load"
    assert outcome.sizes == {"tried_to_allocate": 2359296}


@pytest.mark.parametrize(("exc_type", "message"), [("MemoryError", ""), ("RuntimeError", "std::bad_alloc")])
def test_python_and_cpp_allocation_failures_are_host_oom(exc_type, message):
    """Python's MemoryError and C++'s std::bad_alloc are host OOMs."""
    assert classify(1, exception_report(exc_type, message)).kind == "host_oom"


def test_sigkill_with_oom_kill_evidence_is_host_oom():
    """A SIGKILL while memory.events' oom_kill rose is the kernel OOM killer: host_oom, escalate."""
    outcome = classify(-9, None, oom_killed=True)
    assert outcome.kind == "host_oom"
    assert outcome.escalate
    assert outcome.signal == 9 and outcome.exit_code is None
    assert "OOM killer" in outcome.message


def test_sigkill_without_evidence_is_a_crash():
    """A SIGKILL with no OOM-kill evidence is a retryable crash naming SIGKILL, not an escalation."""
    outcome = classify(-9, None)
    assert outcome.kind == "crash"
    assert not outcome.escalate and outcome.retryable
    assert "SIGKILL" in outcome.message


def test_oom_killed_worker_makes_the_child_fail_as_host_oom():
    """When the OOM killer takes a DataLoader worker and the child then fails, the attempt is a host_oom."""
    report = exception_report("RuntimeError", "DataLoader worker (pid 4242) is killed by signal: Killed.")
    assert classify(1, report, oom_killed=True).kind == "host_oom"


def test_sigsegv_is_a_crash_naming_the_signal():
    """A segfault is a retryable crash whose message names SIGSEGV."""
    outcome = classify(-11, None)
    assert outcome.kind == "crash"
    assert outcome.signal == 11
    assert outcome.message == "killed by SIGSEGV"
    assert outcome.retryable and not outcome.escalate


def test_oom_evidence_wins_over_an_abort_at_teardown():
    """A CUDA OOM reported before a SIGABRT is still a cuda_oom."""
    assert classify(-6, exception_report("OutOfMemoryError", NEW_FORMAT)).kind == "cuda_oom"


@pytest.mark.parametrize(
    ("returncode", "report"),
    [(-15, None), (-2, None), (143, None), (130, None), (0, {"status": "stopped"})],
)
def test_stops_are_not_retried(returncode, report):
    """SIGTERM/SIGINT (raw or as 143/130) and a "stopped" report are stops, never retried."""
    outcome = classify(returncode, report)
    assert outcome.kind == "stopped"
    assert not outcome.retryable and not outcome.escalate


def test_oom_kill_evidence_does_not_turn_a_stop_into_an_oom():
    """A SIGTERM stop stays a stop even if the OOM killer fired elsewhere in the cgroup."""
    assert classify(-15, None, oom_killed=True).kind == "stopped"


@pytest.mark.parametrize(
    ("returncode", "error_kind"),
    [(2, "config_error"), (3, "data_error"), (4, "model_error")],
)
def test_user_errors_are_not_retried(returncode, error_kind):
    """Config, data and model errors keep their kind and message and are not retried."""
    report = {"status": "error", "error_kind": error_kind, "exc_type": "DataError", "message": "data: bad file"}
    outcome = classify(returncode, report)
    assert outcome.kind == error_kind
    assert not outcome.retryable and not outcome.escalate
    assert outcome.message == "DataError: data: bad file"


def test_user_error_exit_code_without_report_keeps_its_kind():
    """Exit code 3 with no report is still a data_error (the code alone says so)."""
    outcome = classify(3, None)
    assert outcome.kind == "data_error"
    assert not outcome.retryable


def test_state_error_exit_is_a_crash_that_is_not_retried():
    """Exit code 5 (state error) has no kind of its own but must not be retried."""
    outcome = classify(5, {"status": "error", "error_kind": "state_error", "message": "corrupt database"})
    assert outcome.kind == "crash"
    assert not outcome.retryable


def test_done():
    """A "done" report with exit code 0 is done, and there is nothing to retry."""
    outcome = classify(0, {"status": "done", "step": 100})
    assert outcome.kind == "done"
    assert outcome.step == 100
    assert not outcome.retryable and not outcome.escalate


def test_exit_zero_without_report_is_a_crash():
    """A child that exits 0 without writing its report crashed."""
    outcome = classify(0, None)
    assert outcome.kind == "crash"
    assert "without a report" in outcome.message
    assert outcome.retryable


def test_exit_one_without_report_is_a_crash():
    """A child that exits 1 without a report is a retryable crash naming its exit code."""
    outcome = classify(1, None)
    assert outcome.kind == "crash"
    assert outcome.message == "exited with code 1 without a report"


def test_other_exception_is_a_crash():
    """An exception that is not an allocation failure is a crash with its type and first line."""
    outcome = classify(1, exception_report("ValueError", "bad shape\nTraceback ..."))
    assert outcome.kind == "crash"
    assert outcome.message == "ValueError: bad shape"
    assert not outcome.escalate


def test_hang_is_retryable_without_escalation():
    """A child killed because its heartbeat stopped is a hang: retried on the same plan."""
    outcome = classify(-9, None, hung=True)
    assert outcome.kind == "hang"
    assert outcome.retryable and not outcome.escalate


def test_unknown_exit_status_is_lost():
    """No exit status at all (the supervisor lost the child) is `lost`, retryable."""
    outcome = classify(None, None)
    assert outcome.kind == "lost"
    assert outcome.retryable


def test_unknown_phase_is_dropped():
    """A phase outside the known set becomes None rather than leaking into the ladder."""
    assert classify(1, exception_report("OutOfMemoryError", NEW_FORMAT, phase="warmup")).phase is None


def test_outcome_round_trips_through_dict():
    """to_dict/from_dict keep every field."""
    outcome = classify(1, exception_report("OutOfMemoryError", NEW_FORMAT))
    assert Outcome.from_dict(outcome.to_dict()) == outcome


def test_one_line_takes_first_non_empty_line_and_truncates():
    """one_line skips blank lines and cuts long lines with an ellipsis."""
    assert one_line("\n\n  first  \nsecond") == "first"
    assert one_line("x" * 400) == "x" * 297 + "..."


def test_read_memory_events(tmp_path):
    """memory.events counters parse to ints; an unreadable file gives None."""
    path = tmp_path / "memory.events"
    path.write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n")
    assert read_memory_events(path) == {"low": 0, "high": 0, "max": 12, "oom": 3, "oom_kill": 2, "oom_group_kill": 0}
    assert read_memory_events(tmp_path / "missing") is None


def test_detect_oom_kill():
    """Only a rise in oom_kill between two snapshots counts; missing snapshots never do."""
    assert detect_oom_kill({"oom_kill": 2}, {"oom_kill": 3})
    assert not detect_oom_kill({"oom_kill": 2}, {"oom_kill": 2})
    assert not detect_oom_kill({"oom": 1, "oom_kill": 0}, {"oom": 2, "oom_kill": 0})
    assert not detect_oom_kill(None, {"oom_kill": 5})
    assert not detect_oom_kill({"oom_kill": 0}, None)
