"""Multi-process runs without processes: one outcome for a group of ranks, the batch geometry per
rank, the torchrun command line, the FSDP rung and the planner's sharded estimate."""

from __future__ import annotations

import pytest

from tamer.config import build_config
from tamer.daemon.classify import classify_group
from tamer.engine import distributed
from tamer.errors import ConfigError
from tamer.plan import DeviceFacts, Plan
from tamer.planner.candidates import PlannerPolicy, choose, device_budget
from tamer.planner.estimate import ModelShape, Workload, estimate
from tamer.strategies import registry
from tamer.strategies.ladder import initial_plan

GiB = 2**30
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 1.96 GiB. GPU 1 has a total capacity of 79.19 GiB of which 1.38 GiB is free. "
    "15.00 GiB allowed; Of the allocated memory 13.92 GiB is allocated by PyTorch, and 598.32 MiB is reserved by PyTorch but unallocated."
)
GLOO_RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:23456: Connection reset "
    "by peer. This is typically caused by a remote worker hanging or bugs in the application."
)
NCCL_REMOTE = (
    "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, remote process exited or there was a network "
    "error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely."
)
CUDA = DeviceFacts(
    kind="cuda", name="NVIDIA H100 80GB HBM3", total_memory=80 * GiB, compute_capability=(9, 0), bf16=True, fp16=True
)


def failed(rank: int, exc_type: str, message: str, at: float, phase: str = "backward") -> dict:
    return {
        "status": "exception",
        "exc_type": exc_type,
        "message": message,
        "phase": phase,
        "step": 7,
        "micro_batch_size": 4,
        "rank": rank,
        "time": at,
    }


# --- one outcome for the group ----------------------------------------------------------------------


def test_oom_on_one_rank_is_the_groups_outcome_and_escalates():
    """Rank 1 ran out of memory; rank 0 then lost its peer inside the all-reduce. One cuda_oom, blamed on
    rank 1, escalating; the peer's connection error is not a second failure."""
    reports = {0: failed(0, "RuntimeError", GLOO_RESET, at=101.0), 1: failed(1, "OutOfMemoryError", CUDA_OOM, at=100.0)}
    outcome = classify_group(1, reports, 2)
    assert (outcome.kind, outcome.rank, outcome.escalate, outcome.phase) == ("cuda_oom", 1, True, "backward")
    assert outcome.message.startswith("rank 1 of 2: OutOfMemoryError") and outcome.sizes["tried_to_allocate"] > 0


def test_the_earliest_of_several_ooms_is_classified():
    reports = {
        0: failed(0, "OutOfMemoryError", CUDA_OOM, at=100.5, phase="optimizer"),
        1: failed(1, "OutOfMemoryError", CUDA_OOM, at=100.0),
    }
    outcome = classify_group(1, reports, 2)
    assert (outcome.rank, outcome.phase) == (1, "backward")


def test_an_oom_wins_even_when_it_is_not_first():
    """A peer's connection error can be stamped before the OOM report of the rank that caused it."""
    reports = {0: failed(0, "RuntimeError", GLOO_RESET, at=99.0), 1: failed(1, "OutOfMemoryError", CUDA_OOM, at=100.0)}
    assert classify_group(1, reports, 2).kind == "cuda_oom"


def test_every_rank_done_is_done():
    reports = {rank: {"status": "done", "step": 30, "rank": rank, "time": 1.0} for rank in range(2)}
    outcome = classify_group(0, reports, 2)
    assert outcome.kind == "done" and not outcome.retryable


def test_a_rank_lost_without_a_report_is_a_dist_failure_without_escalation():
    """Rank 1 was SIGKILLed; rank 0 saw its peer vanish: dist_failure, retried on the same plan."""
    outcome = classify_group(1, {0: failed(0, "RuntimeError", GLOO_RESET, at=100.0)}, 2)
    assert outcome.kind == "dist_failure" and outcome.retryable and not outcome.escalate
    assert outcome.rank == 1 and outcome.message.startswith("rank 1 of 2 died without a report")
    assert "then rank 0: RuntimeError" in outcome.message


def test_nccl_remote_error_and_silent_ranks_are_dist_failures():
    assert classify_group(1, {0: failed(0, "DistBackendError", NCCL_REMOTE, at=1.0)}, 2).kind == "dist_failure"
    lost = classify_group(-9, {}, 4)
    assert lost.kind == "dist_failure" and "before any rank reported" in lost.message
    partly = classify_group(1, {0: {"status": "done", "step": 3, "rank": 0, "time": 1.0}}, 4)
    assert partly.kind == "dist_failure" and partly.message.startswith(
        "rank 1 of 4 died without a report (killed, or crashed hard); rank 2, 3 too"
    )


def test_a_ranks_own_crash_is_a_crash_of_that_rank():
    """A bug on rank 0 (its RuntimeError came first), then rank 1 lost its peer: a crash, blamed on rank 0."""
    reports = {
        0: failed(0, "RuntimeError", "injected crash (tamer --inject)", at=100.0),
        1: failed(1, "RuntimeError", GLOO_RESET, at=100.2),
    }
    outcome = classify_group(1, reports, 2)
    assert (outcome.kind, outcome.rank, outcome.escalate) == ("crash", 0, False)


def test_a_config_error_on_any_rank_is_not_retried():
    reports = {
        1: {
            "status": "error",
            "error_kind": "config_error",
            "exit_code": 2,
            "message": "process 1 has no GPU of its own",
            "rank": 1,
            "time": 5.0,
        }
    }
    outcome = classify_group(1, reports, 2)
    assert outcome.kind == "config_error" and not outcome.retryable and outcome.rank == 1


def test_stop_request_hang_and_oom_killer():
    stopped = {rank: {"status": "stopped", "signal": 15, "step": 12, "rank": rank, "time": 1.0} for rank in range(2)}
    outcome = classify_group(0, stopped, 2, stop_requested=True)
    assert (outcome.kind, outcome.step, outcome.retryable) == ("stopped", 12, False)
    assert classify_group(-9, {}, 2, hung=True).kind == "hang"
    killed = classify_group(1, {0: failed(0, "RuntimeError", GLOO_RESET, at=1.0)}, 2, oom_killed=True)
    assert killed.kind == "host_oom" and killed.escalate


# --- geometry, config, command line -------------------------------------------------------------------


def config(**options):
    return build_config("tiny", None, options, [])


def test_each_process_takes_its_share_of_the_effective_batch():
    """Effective batch = micro-batch x accumulation x world size, the same as with one process."""
    assert config(**{"distributed.nproc_per_node": 2}).rank_geometry() == (4, 1)
    wide = config(effective_batch_size=32, micro_batch_size=8, **{"distributed.nproc_per_node": 2})
    assert wide.rank_geometry() == (8, 2)
    odd = config(effective_batch_size=24, micro_batch_size=8, **{"distributed.nproc_per_node": 2})
    assert odd.rank_geometry() == (6, 2)  # the largest divisor of the share (12) not above 8
    plan = initial_plan(wide, CUDA)
    assert (plan.world_size, plan.micro_batch_size, plan.grad_accumulation, plan.effective_batch_size) == (2, 8, 2, 32)


def test_a_batch_the_processes_cannot_share_is_refused():
    with pytest.raises(ConfigError, match="cannot be shared evenly by 3 processes"):
        config(**{"distributed.nproc_per_node": 3})
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        config(**{"distributed.nnodes": 2})
    with pytest.raises(ConfigError, match="expected host:port, got 'node0'"):
        config(**{"distributed.nnodes": 2, "distributed.rdzv_endpoint": "node0"})
    with pytest.raises(ConfigError, match="start node 1 with `tamer join RUN_DIR --node-rank 1`"):
        config(**{"distributed.nnodes": 2, "distributed.node_rank": 1, "distributed.rdzv_endpoint": "node0:29400"})
    with pytest.raises(ConfigError, match="nproc_per_node: must be >= 1"):
        config(**{"distributed.nproc_per_node": 0})
    with pytest.raises(ConfigError, match="x world_size = 16"):
        config(start_plan={"micro_batch_size": 8, "grad_accumulation": 1}, **{"distributed.nproc_per_node": 2})


def test_the_batch_is_cut_into_contiguous_rank_shares():
    items = list(range(8))
    assert distributed.shard_of(distributed.Group(0, 0, 2), items) == [0, 1, 2, 3]
    assert distributed.shard_of(distributed.Group(1, 1, 2), items) == [4, 5, 6, 7]
    assert distributed.shard_of(distributed.Group(), items) == items


def test_torchrun_command_lines(tmp_path):
    """One node: --standalone; several: a static rendezvous at node 0's endpoint, node 0 from `tamer run`, the
    others from `tamer join` (the follower); never torchrun's own restarts."""
    from tamer.daemon.follower import Follower
    from tamer.daemon.supervisor import Supervisor, create_run
    from tamer.state.home import Home

    home = Home.resolve(tmp_path)
    commands = []
    for options in (
        {"distributed.nproc_per_node": 2},
        {"distributed.nproc_per_node": 2, "distributed.nnodes": 2, "distributed.rdzv_endpoint": "node0:29400"},
        {},
    ):
        run_id = create_run(home, config(**options))
        supervisor = Supervisor(home, run_id)
        supervisor.plan = initial_plan(supervisor.config, CUDA)
        commands.append(supervisor._command(1))
    standalone, node0, single = commands
    follower = Follower(
        home.run_dir(
            run_id := create_run(
                home,
                config(
                    **{
                        "distributed.nproc_per_node": 2,
                        "distributed.nnodes": 2,
                        "distributed.rdzv_endpoint": "node0:29400",
                    }
                ),
            )
        ),
        1,
    )
    from tamer.daemon.runner import command

    node1 = command(follower.run_dir, 1, initial_plan(follower.config, CUDA), follower.config, run_id)
    assert standalone[1:3] == ["-m", "tamer.engine.launch"] and "--standalone" in standalone
    assert standalone[standalone.index("--max-restarts") + 1] == "0"
    assert standalone[-4:-2] == ["-m", "tamer.engine.child"] and standalone[-1] == "1"
    for rank, line in ((0, node0), (1, node1)):
        assert "--standalone" not in line and line[line.index("--nnodes") + 1] == "2"
        assert line[line.index("--node-rank") + 1] == str(rank) and line[line.index("--master-addr") + 1] == "node0"
        assert line[line.index("--master-port") + 1] == "29400"
    assert single[1:3] == ["-m", "tamer.engine.child"]


# --- the fsdp rung and the planner ---------------------------------------------------------------------


def test_fsdp_applies_only_to_multi_process_full_fine_tunes():
    fsdp = registry.get("fsdp")
    two = Plan(micro_batch_size=4, grad_accumulation=1, eval_batch_size=8, world_size=2)
    assert fsdp.not_applicable(two, CUDA) is None and fsdp.apply(two, CUDA).parallel == "fsdp"
    assert "one process" in fsdp.not_applicable(two.replace(world_size=1), CUDA)
    assert "LoRA" in fsdp.not_applicable(two.replace(lora=True), CUDA)
    assert "cannot hold sharded" in fsdp.not_applicable(two.replace(optimizer="paged_adamw_8bit"), CUDA)
    assert two.replace(parallel="fsdp").effective_batch_size == 8 and "FSDP" in two.replace(parallel="fsdp").describe()


def test_fsdp_divides_model_state_and_ddp_keeps_gradients():
    """1B, full fine-tune, fp32 AdamW, 2 processes: FSDP's optimizer step holds about half of DDP's
    model state; DDP's gradients (all-reduce buckets) exist during forward too."""
    cfg = build_config("llama-3.2-1b", None, {"distributed.nproc_per_node": 2, "pad_to_max_len": True}, [])
    shape, workload = ModelShape.from_architecture(cfg.architecture), Workload.from_config(cfg)
    ddp = Plan(micro_batch_size=4, grad_accumulation=1, eval_batch_size=8, world_size=2, gradient_checkpointing=True)
    fsdp = ddp.replace(parallel="fsdp")
    one = ddp.replace(world_size=1)
    opt_ddp, opt_fsdp = (estimate(shape, plan, workload).phases["optimizer"].total for plan in (ddp, fsdp))
    assert 0.45 < opt_fsdp / opt_ddp < 0.6
    assert estimate(shape, ddp, workload).phases["forward"].components["gradients"] == 4 * shape.parameters
    assert estimate(shape, one, workload).phases["forward"].components["gradients"] == 0


def test_planner_shards_when_ddp_cannot_fit_the_full_fine_tune():
    """Without bitsandbytes and with LoRA forbidden, a 1B full fine-tune (~20 GB of model state) cannot
    fit 15 GiB per GPU under DDP; sharded across 2 it can, so the planner picks FSDP."""
    cfg = build_config(
        "llama-3.2-1b", None, {"distributed.nproc_per_node": 2, "pad_to_max_len": True}, ["planner.allow_lora=false"]
    )
    facts = DeviceFacts(
        kind="cuda",
        name="H100",
        total_memory=80 * GiB,
        compute_capability=(9, 0),
        bf16=True,
        fp16=True,
        bitsandbytes=False,
    )
    policy = PlannerPolicy(allow_lora=False, rungs=(*cfg.ladder.order, "chunked_loss"))
    choice = choose(cfg, facts, device_budget(facts.total_memory, 15 * GiB), policy, workload=Workload.from_config(cfg))
    assert choice is not None and choice.plan.parallel == "fsdp" and "fsdp" in choice.plan.rungs
    assert choice.plan.effective_batch_size == 8
    ddp_full = [c for c in choice.candidates if c.plan.parallel == "ddp" and not c.plan.lora]
    assert ddp_full and all(c.fits != "yes" for c in ddp_full)


def test_a_rank_seen_dying_first_is_named_when_no_rank_reported():
    """SIGKILL of rank 1, then torchrun's SIGTERM reached rank 0 before it could report: nothing written,
    but the supervisor saw rank 1 go first."""
    outcome = classify_group(1, {}, 2, died_first=1)
    assert (outcome.kind, outcome.rank) == ("dist_failure", 1) and outcome.message.startswith(
        "rank 1 of 2 died without a report"
    )
    assert "rank 0 too" in outcome.message


def test_torchrun_names_the_first_failed_rank_in_the_child_log(tmp_path):
    """When both ranks are gone between two polls, the rank torchrun's agent saw fail first is taken from
    its log line (as an H100 pair printed it)."""
    from tamer.daemon.runner import RankWatch

    (tmp_path / "child.log").write_text(
        "W1125 22:32:30.469000 2464 torch/distributed/run.py:851] *****\n"
        "E1125 22:32:45.470000 2464 torch/distributed/elastic/multiprocessing/api.py:986] failed (exitcode: -9) "
        "local_rank: 1 (pid: 2511) of binary: /opt/torch/.venv/bin/python3\n"
    )
    (tmp_path / "pid-rank0").write_text("999999991")
    (tmp_path / "pid-rank1").write_text("999999992")
    watch = RankWatch(tmp_path, range(2))
    watch.poll()
    assert watch.died_first == 1 and watch.finish() == 1


def test_a_node_watches_and_kills_only_its_own_ranks(tmp_path):
    """With several machines the shared attempt folder holds every node's pid files; another node's pids
    name processes elsewhere (here: this test's own process, which must survive)."""
    import os
    import signal

    from tamer.daemon.runner import RankWatch, _kill_ranks

    (tmp_path / "pid-rank0").write_text("999999991")  # ours, dead
    (tmp_path / "pid-rank1").write_text(str(os.getpid()))  # node 1's rank: alive somewhere else
    watch = RankWatch(tmp_path, range(0, 1))
    watch.poll()
    assert watch.pids == {0: 999999991} and watch.died_first == 0
    _kill_ranks(tmp_path, signal.SIGKILL, range(0, 1))  # would kill this process if it counted rank 1
    watch = RankWatch(tmp_path, range(1, 2))
    watch.poll()
    assert watch.pids == {1: os.getpid()} and watch.died_first is None


def test_joining_a_run_that_is_not_multi_node_is_refused(tmp_path):
    from tamer.daemon.follower import Follower
    from tamer.daemon.supervisor import create_run
    from tamer.errors import StateError
    from tamer.state.home import Home

    home = Home.resolve(tmp_path)
    single = home.run_dir(create_run(home, config()))
    with pytest.raises(ConfigError, match="distributed.nnodes 1"):
        Follower(single, 1)
    two = home.run_dir(
        create_run(home, config(**{"distributed.nnodes": 2, "distributed.rdzv_endpoint": "node0:29400"}))
    )
    with pytest.raises(ConfigError, match=r"--node-rank: must be in \[1, 1\]"):
        Follower(two, 2)
    with pytest.raises(StateError, match="not a tamer run folder"):
        Follower(tmp_path / "nowhere", 1)


def test_a_paged_mark_saved_with_the_optimizer_state_is_not_trusted_after_loading(tmp_path):
    """torch.save keeps tensor attributes: moments saved from bitsandbytes' paged AdamW load as ordinary
    tensors still marked is_paged, and bitsandbytes would prefetch them as managed memory (a CUDA error
    that ends the process; seen on an H100). On CPU the mark is dropped; on CUDA they are re-paged
    (tests/gpu/test_gpu_escalation.py::test_paged_optimizer_resumes_from_its_checkpoint)."""
    import torch

    from tamer.engine.optim import repage_state

    parameter = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW([parameter])
    parameter.grad = torch.ones(4)
    optimizer.step()
    moment = optimizer.state[parameter]["exp_avg"]
    moment.is_paged = True
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    loaded = torch.load(tmp_path / "optimizer.pt", weights_only=False)
    assert loaded["state"][0]["exp_avg"].is_paged  # the cause: the mark survives the round trip
    optimizer.load_state_dict(loaded)
    assert repage_state(optimizer) == 0
    assert not getattr(optimizer.state[parameter]["exp_avg"], "is_paged", False)
