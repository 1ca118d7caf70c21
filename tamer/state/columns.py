"""What each table and column of the database holds, for people: the database reference page
(docs/reference/database.md) is generated from these and the migrations (tamer/state/db.py), and a test fails
when a migration adds a column that is not described here."""

from __future__ import annotations

TIMES_AND_SIZES = "Times are Unix seconds (float); memory columns are bytes; JSON columns hold text to parse."

TABLES = {
    "runs": "One row per run.",
    "attempts": "One row per child process (an attempt) of a run.",
    "steps": "One row per optimizer step per attempt; a step redone after a restart appears again under the later attempt.",
    "evals": "One row per validation-loss evaluation.",
    "events": "The run's log, in order: what `tamer events` and the progress lines show.",
    "queue": "Runs submitted with `tamer submit`, for the daemon.",
    "squad_scores": "One row per metric per SQuAD (or EM/F1) pass.",
    "forwarded": "How far the supervisor's mirror got, per run and sink (a tracker's name, or `notify`).",
}

_EVENT_KINDS = (
    "created, attempt_start, data, start, resume, resume_run, checkpoint, checkpoint_skipped, escalate, restart, "
    "optimizer_reset, lora_from_full, allocator, host_mem_cap, eval, memory_snapshot, hang, checkpoint_failed, planner, "
    "in_process_split, finish, failed, stopped, lost, squad_eval, squad_eval_skipped, export, result_failed, "
    "notify_sent, notify_failed, tracker_failed, and more"
)

COLUMNS = {
    "runs": {
        "id": "run id, `<recipe>-<YYYYMMDD>-<HHMMSS>-<hex>`; commands accept a unique prefix",
        "recipe": "what was trained (squad, chat, instruct, text)",
        "preset": "the preset the config started from",
        "status": "queued, running, done, failed, stopped, cancelled",
        "config_json": "the full RunConfig",
        "config_hash": "hash of the keys that decide the training result (docs/reference/config.md, column result)",
        "run_dir": "`$TAMER_HOME/runs/<id>`: plans, checkpoints, logs, attempt reports",
        "created_at": "registration",
        "started_at": "first supervision",
        "ended_at": "the end",
        "total_steps": "planned optimizer steps",
        "steps_done": "completed optimizer steps",
        "samples_consumed": "samples trained",
        "final_loss": "last train loss",
        "final_eval_loss": "last validation loss",
        "best_eval_loss": "lowest validation loss",
        "failure_reason": "why a run ended failed or stopped",
        "gpu_mem_cap": "the GPU memory cap in bytes, when set",
        "host_mem_cap": "the host memory cap in bytes, when set",
        "device_json": "DeviceFacts the ladder used (kind, name, total_memory, bf16, fp16, bitsandbytes)",
        "supervisor_pid": "the supervising process while running",
        "exit_code": "the run's exit code",
    },
    "attempts": {
        "run_id": "the run",
        "attempt": "the attempt number (1, 2, ...)",
        "plan_json": "the plan the child trained with, in full",
        "plan_summary": "the same in one line",
        "rungs_applied": "JSON list: rungs this attempt added over the previous plan",
        "reason": "why this plan: `first plan`, or the escalation that led here",
        "pid": "the child's process id",
        "started_at": "child start",
        "first_step_at": "its first completed step",
        "ended_at": "its end",
        "resumed_from_step": "the checkpoint step the attempt resumed from (0: from the start)",
        "last_step": "the last step it completed",
        "exit_code": "how the process ended: its status",
        "signal": "how the process ended: the signal that killed it",
        "outcome": "done, cuda_oom, host_oom, crash, hang, stopped, config_error, data_error, model_error, lost, dist_failure, "
        "outside_kill, disk_full, file_too_large (tamer/protocol.py OutcomeKind)",
        "phase": "load, forward, backward, optimizer, checkpoint, eval: where it failed",
        "micro_batch_size": "the micro-batch when it failed",
        "message": "the error's first line",
        "detail_json": "the classified outcome: `sizes` parsed from the OOM message (tried_to_allocate, total_capacity, free, "
        "allocated_by_pytorch, reserved_total, ...), `memory_stats` (peaks from torch), `step`, `peak_host_rss`, `rank`",
        "peak_allocated": "torch's allocator peak allocated in the attempt (GPU runs)",
        "peak_reserved": "torch's allocator peak reserved in the attempt (GPU runs)",
        "world_size": "processes of the attempt (1, or N under torchrun)",
    },
    "steps": {
        "run_id": "the run",
        "attempt": "the attempt that trained the step",
        "step": "the optimizer step",
        "samples_consumed": "samples trained after this step",
        "loss": "train loss (mean over supervised tokens)",
        "lr": "learning rate used",
        "grad_norm": "gradient norm before clipping",
        "tokens": "tokens in the step",
        "tokens_per_s": "throughput",
        "step_time": "seconds for the step",
        "micro_batch_size": "the micro-batch (micro-batch x accumulation x processes = the effective batch, constant)",
        "grad_accumulation": "micro-batches per optimizer step",
        "mem_allocated": "torch's allocator after the step (GPU); with several processes the highest over the ranks",
        "mem_reserved": "torch's reserved memory after the step (GPU); the highest over the ranks",
        "mem_peak": "torch's peak allocated in the step (GPU); the highest over the ranks",
        "device_used": "the whole device's used memory through NVML, every process included (GPU)",
        "host_rss": "the child's resident memory",
        "wall_time": "when the step ended",
        "sample_ids": "JSON list of the example indices trained, in order (rank r trained the r-th contiguous share)",
        "rank_memory_json": "multi-GPU runs: JSON list, one `{mem_allocated, mem_reserved, mem_peak, device_used, host_rss}` per rank",
        "useful_tokens": "the samples' own tokens (null before migration 5)",
        "computed_tokens": "the positions computed, padding and a packed row's tail included (null before migration 5)",
    },
    "evals": {
        "run_id": "the run",
        "attempt": "the attempt",
        "step": "the step evaluated",
        "eval_loss": "validation loss (mean over supervised tokens)",
        "eval_tokens": "supervised tokens scored",
        "eval_samples": "validation examples",
        "eval_batch_size": "sequences per evaluation forward",
        "wall_time": "when it ended",
    },
    "events": {
        "id": "order of the events",
        "run_id": "the run",
        "attempt": "the attempt (empty for the supervisor's own)",
        "time": "when",
        "kind": f"what happened: {_EVENT_KINDS}",
        "message": "one line for people",
        "detail_json": "the facts behind the message",
    },
    "queue": {
        "run_id": "the submitted run",
        "submitted_at": "when `tamer submit` queued it",
        "claimed_at": "when a daemon took it",
        "daemon_pid": "the daemon that took it",
    },
    "squad_scores": {
        "id": "order of the rows",
        "run_id": "the run",
        "step": "the checkpoint scored",
        "attempt": "the run's last attempt then",
        "plan": "the summary of the plan the weights trained under",
        "metric": "`exact_match` or `f1`",
        "value": "0 to 1",
        "questions": "questions (or rows) scored",
        "seconds": "decoding and scoring",
        "data": "`held-out` (the run's validation rows) or the source `tamer eval --data` scored",
        "wall_time": "when it ended",
    },
    "forwarded": {
        "run_id": "the run",
        "sink": "a tracker's name (tensorboard, mlflow, wandb) or `notify`",
        "event_id": "the last event sent",
        "step": "the last step sent",
        "eval_step": "the last evaluation sent",
        "score_id": "the last score row sent",
        "external_id": "the MLflow or W&B run id",
        "updated_at": "when the row last moved",
    },
}
