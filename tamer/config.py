"""RunConfig: what the user asked for, validated, from a preset + YAML + `--set key=value`.

Precedence: preset (tamer/presets.py) < YAML file (`--config`) < command-line options < `--set`.
Every structure is a strict schema (tamer/schema.py, pydantic): an unknown key or a wrong type is a
one-line ConfigError naming the key's path (`lora.r: expected an integer, got 'big'`); bounds are
declared on the keys, checks across keys live in validators; sizes are parsed once (ByteSize).

The config is what the user wants (effective batch, data, schedule); the plan (tamer/plan.py) is how
it is trained, and only the plan changes when tamer recovers from out-of-memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from tamer.errors import ConfigError
from tamer.inject import parse_faults
from tamer.plan import Plan
from tamer.presets import PRESETS, RECIPE_DEFAULTS
from tamer.schema import Number, Schema, Seconds
from tamer.strategies import registry
from tamer.units import ByteSize

CARD_LADDER = (
    "expandable_segments",
    "gradient_checkpointing",
    "mixed_precision",
    "fsdp",
    "quantize_8bit",
    "quantize_4bit",
    "lora",
    "paged_adamw_8bit",
    "split_micro_batch",
)

# Other trainers' names for tamer's keys: refused with the tamer key to use rather than accepted as
# aliases, so that each setting has one name (and a batch is never set twice, as in HF).
FOREIGN_NAMES = {
    "gradient_accumulation_steps": "tamer derives accumulation as effective_batch_size / micro_batch_size: set effective_batch_size "
    "(sequences per optimizer step)",
    "per_device_train_batch_size": "use micro_batch_size (the first plan's micro-batch, which tamer may halve) and "
    "effective_batch_size (sequences per optimizer step, which never changes)",
    "num_train_epochs": "use epochs",
    "num_epochs": "use epochs",
    "sequence_len": "use max_seq_len",
    "lr": "use learning_rate",
    "lora_r": "use lora: {r: ...}",
    "lora_alpha": "use lora: {alpha: ...}",
    "lora_dropout": "use lora: {dropout: ...}",
}


DATA_KEYS = {
    "eval_data": ("chat", "instruct", "text"),
    "split": ("chat", "instruct", "text"),
    "eval_split": ("chat", "instruct", "text"),
    "validation_split": ("chat", "instruct", "text"),
    "columns": ("chat", "instruct", "text"),
    "chat_template": ("chat",),
    "train_on": ("chat",),
    "prompt_template": ("instruct",),
    "overlong": ("chat", "instruct"),
}
"""The keys only some recipes read (tamer/recipes/prepare.py), and which."""


class LoraConfig(Schema):
    """LoRA adapters (peft), used once the `lora` rung is applied."""

    r: int = Field(16, ge=1)
    """Adapter rank: memory and capacity grow with it."""
    alpha: int = 32
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: Number = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Linear layers that get adapters (default: all linear projections of a Llama block)."""
    learning_rate: Number = Field(2e-4, gt=0)
    """Peak learning rate of every plan that trains LoRA adapters (the first plan, the planner's choice, start_rungs,
    start_plan, an escalation mid-run), in place of `learning_rate`: adapters start at zero and need a rate ~10x a full
    fine-tune's (measured in docs/result.md). A run that moves to LoRA mid-run keeps its schedule's position with this peak."""


class EvalConfig(Schema):
    """SQuAD evaluation by generation (tamer/engine/result.py): greedy answers to held-out questions, EM and F1
    (also the chat and instruct recipes' replies with `em_f1`)."""

    squad_every: int | None = None
    """null = once, after the last step (a child process after the run), and on demand with `tamer eval`; N = also every N steps during training (single process only); each pass costs about squad_samples x squad_max_new_tokens decoding steps."""
    squad_samples: int = Field(256, ge=0)
    """Held-out questions answered per pass (at most eval_samples: only the validation slice is ever used); 0 = no SQuAD evaluation.
    Also the validation rows of a chat or instruct EM/F1 pass (`em_f1`)."""
    squad_batch_size: int = Field(64, ge=1)
    """Questions decoded together (an OOM halves it for the rest of the pass); memory grows with it and the KV cache,
    and so does the speed of the pass."""
    squad_max_new_tokens: int = Field(32, ge=1)
    """Longest generated answer in tokens (SQuAD answers are short); decoding stops earlier at end-of-sequence."""
    em_f1: bool = False
    """chat and instruct: also score exact match and F1 (SQuAD's scorer) of greedy replies to up to squad_samples validation
    rows after the run and in `tamer eval`, against a row's `answers` or its last assistant turn / completion; for short answers."""

    @model_validator(mode="after")
    def _every(self) -> EvalConfig:
        if self.squad_every is not None and self.squad_every < 1:
            raise ConfigError(f"eval.squad_every: must be >= 1 or null (once at the end), got {self.squad_every}")
        return self


class ExportConfig(Schema):
    """The Hugging Face model folder written when a run completes (`tamer export` writes one on demand)."""

    enabled: bool = True
    """Export after the run; costs one copy of the weights on disk (bf16: 2 bytes per parameter) and a few seconds."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Weights dtype of the export; auto = bf16 when training kept fp32 master weights, else the training dtype."""
    merge_lora: bool = True
    """Merge LoRA adapters into the base (a standalone model); false = the adapter with a pointer to its base."""


class LadderConfig(Schema):
    """The escalation ladder: which memory-saving rungs may be applied after an OOM, in which order."""

    order: list[str] = Field(default_factory=lambda: list(CARD_LADDER))
    """Rungs allowed, in the order the card ladder tries them; leave one out to forbid it."""
    mode: Literal["planner", "card"] = "planner"
    """`planner`: pick the fastest plan predicted to fit (first plan and after every OOM), falling back to
    the card order when no plan is predicted to fit confidently; `card`: the order above, literally."""
    in_process_split: bool = True
    """In planner mode, a CUDA OOM in forward/backward halves the micro-batch inside the child and retries
    the same optimizer step (no restart, same samples) when split_micro_batch is allowed."""

    @model_validator(mode="after")
    def _known_rungs(self) -> LadderConfig:
        known = registry.names()
        for index, name in enumerate(self.order):
            if name not in known:
                raise ConfigError(f"ladder.order[{index}]: unknown rung '{name}'; known rungs: {', '.join(known)}")
        if len(set(self.order)) != len(self.order):
            raise ConfigError("ladder.order: a rung is listed twice; list each once")
        return self


class PlannerConfig(Schema):
    """What the planner (`ladder.mode: planner`) may change to fit the card."""

    allow_lora: bool = True
    """LoRA adapters instead of a full fine-tune."""
    allow_quantization: bool = True
    """Quantized base weights, int8 or 4-bit NF4 (both need LoRA); leave quantize_4bit out of ladder.order to allow int8
    only."""
    allow_pure_bf16: bool = False
    """Pure bf16 weights and optimizer states: fastest, but small updates are lost to rounding."""
    min_micro_batch: int = Field(1, ge=1)
    """Smallest micro-batch the planner may split down to."""
    safety_margin: Number = Field(0.10, ge=0, lt=1)
    """Fraction of the card (after the CUDA context) kept free when judging a fit."""
    supervised_per_sequence: int = Field(16, ge=1)
    """Supervised (answer + EOS) tokens per sequence assumed when estimating the loss's logits."""
    selective_checkpointing: bool = True
    """A plan with activation checkpointing checkpoints only the fewest layers predicted to fit (false: all layers,
    the most memory saved and the most recomputation)."""
    checkpointing_by_size: bool = True
    """With selective checkpointing and `packed`/`bucket` batches on one process: fewer layers checkpointed for micro-batches
    shorter than the longest, per the memory predicted at each size (Plan.checkpoint_layers_by_tokens)."""


class DeescalateConfig(Schema):
    """Stepping back to a faster plan after an OOM caused by other processes on the card (a squeeze)
    once their memory is back: the supervisor reads the card through NVML (no CUDA) while it trains on
    the escalated plan, then stops the child at a step boundary (one checkpoint) and restarts it under
    the better plan."""

    enabled: bool = True
    """Off: an escalation is for the rest of the run, as before."""
    poll_seconds: Seconds = 30.0
    """Seconds between reads of the card's free memory while on an escalated plan (an NVML query: about a millisecond)."""
    min_squeeze: ByteSize = ByteSize("1GiB")
    """Other processes must have held at least this much of the card at the OOM for it to count as a squeeze."""
    backoff: Number = Field(600.0, ge=0, json_schema_extra={"unit": "seconds"})
    """Seconds before stepping back again to a plan that OOMed after a step back; doubles with each such OOM."""
    backoff_max: Number = Field(4 * 3600.0, ge=0, json_schema_extra={"unit": "seconds"})
    """Longest such wait, in seconds."""
    max_per_plan: int = Field(3, ge=0)
    """Step back to one plan at most this many times per run (each costs a checkpoint and a restart)."""


class WatchdogConfig(Schema):
    """Hang detection: the child heartbeats every micro-step; a missed deadline gets it SIGKILLed and
    restarted (outcome `hang`, no escalation). Seconds; slow phases get longer deadlines."""

    step_timeout: Seconds = 600.0
    """Longest silence during training (between micro-steps)."""
    load_timeout: Seconds = 1800.0
    """Model load, tokenizing and setup, until the first step starts."""
    first_step_timeout: Seconds = 1800.0
    """The first optimizer step of an attempt (kernel autotuning, allocator warm-up)."""
    checkpoint_timeout: Seconds = 1800.0
    """Writing one checkpoint."""
    eval_timeout: Seconds = 3600.0
    """One evaluation pass."""

    def deadline(self, phase: str, first_step: bool) -> float:
        """Seconds of silence allowed in `phase`."""
        if phase == "load":
            return self.load_timeout
        if phase == "checkpoint":
            return self.checkpoint_timeout
        if phase == "eval":
            return self.eval_timeout
        return self.first_step_timeout if first_step else self.step_timeout


class DistributedConfig(Schema):
    """Several processes (one per GPU) through torchrun. One node: `nproc_per_node` (`--gpus`) is enough.
    Several nodes: node 0 runs `tamer run` with `nnodes` and `rdzv_endpoint` (its own host:port, where
    torchrun's static rendezvous listens) and owns the run; the others run `tamer join RUN_DIR --node-rank N`
    on the same run folder (a shared filesystem)."""

    nproc_per_node: int = Field(1, ge=1)
    """Processes (GPUs) on this node; > 1 launches the child through torch.distributed.run."""
    nnodes: int = Field(1, ge=1)
    """Machines in the job (torchrun --nnodes)."""
    node_rank: int | None = None
    """0 (or unset) for `tamer run`: node 0 owns the run; other nodes get theirs from `tamer join --node-rank`."""
    rdzv_endpoint: str | None = None
    """host:port of node 0, where the static rendezvous listens (torchrun --master-addr/--master-port); needed when nnodes > 1."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Collective backend: auto = nccl on CUDA, gloo on CPU."""
    timeout: Seconds = 600.0
    """Seconds a collective may wait for a peer before the group fails (outcome dist_failure)."""

    @model_validator(mode="after")
    def _nodes(self) -> DistributedConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError("distributed.rdzv_endpoint: several nodes need a rendezvous host:port (--rdzv-endpoint)")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"distributed.node_rank: must be in [0, {self.nnodes}), got {self.node_rank}")
        if self.node_rank:
            raise ConfigError(
                f"distributed.node_rank: `tamer run` starts node 0, which owns the run; start node {self.node_rank} "
                f"with `tamer join RUN_DIR --node-rank {self.node_rank}` on the same run folder"
            )
        if self.rdzv_endpoint is not None and not re.fullmatch(r"[^\s:]+:\d+", self.rdzv_endpoint):
            raise ConfigError(f"distributed.rdzv_endpoint: expected host:port, got {self.rdzv_endpoint!r}")
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


TRACKERS = ("tensorboard", "mlflow", "wandb")
_WEBHOOK = re.compile(r"^(https?://\S+|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)$")


class EmailConfig(Schema):
    """E-mail through SMTP (Python's smtplib). The login comes from the supervisor's environment, never from a
    file: TAMER_SMTP_USER and TAMER_SMTP_PASSWORD (no login when TAMER_SMTP_USER is unset)."""

    to: list[str] = Field(min_length=1)
    """Recipients' addresses."""
    sender: str | None = None
    """The From address; null = tamer@ this machine's host name."""
    host: str = "localhost"
    """SMTP server."""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """SMTP port; null = 465 with `tls: ssl`, 587 with `starttls`, 25 with `none`."""
    tls: Literal["starttls", "ssl", "none"] = "starttls"
    """`starttls` upgrades a plain connection (port 587), `ssl` connects over TLS (port 465), `none` sends in clear
    text (a relay on this machine only)."""


class NotifyConfig(Schema):
    """Being told how the run goes (tamer/notify/): a webhook, a command, e-mail. The supervisor sends, never
    the training child, from a worker thread: a send that fails is retried with backoff, then recorded as an
    event; it never blocks or fails the run. `HOME/notify.yaml` (these keys) adds targets for every run of the
    home and the daemon's queue."""

    webhook: str | None = None
    """URL that gets a JSON POST per notification (`text` for Slack, `content` for Discord, and the facts as fields);
    `$NAME` reads the URL from the supervisor's environment variable NAME (a Slack webhook URL is itself the secret:
    that keeps it out of the config and the database). Events show it redacted."""
    command: str | None = None
    """Shell command run per notification with TAMER_RUN_ID, TAMER_STATUS, TAMER_EVENT, TAMER_MESSAGE, TAMER_STEP,
    TAMER_HOME and TAMER_RUN_DIR in its environment; a non-zero exit is a failed send."""
    email: EmailConfig | None = None
    """E-mail through SMTP (see EmailConfig)."""
    events: list[Literal["finished", "failed", "stopped", "escalated", "deescalated", "stalled", "queue_empty"]] = (
        Field(default_factory=lambda: ["finished", "failed", "stopped", "deescalated", "stalled", "queue_empty"])
    )
    """Which notifications to send: finished (final loss, EM/F1, where the model is), failed (why, what to do next),
    stopped, escalated (each plan change after an OOM; off by default: a night can have several), deescalated (back
    to a faster plan), stalled (no optimizer step for `stalled_minutes`), queue_empty (the daemon ran out of work)."""
    stalled_minutes: Annotated[Number, Field(gt=0)] | None = 30.0
    """Notify once when no optimizer step was recorded for this many minutes while the run is running (null = never);
    the watchdog still kills a hung child after its own deadlines."""
    attempts: int = Field(5, ge=1)
    """Tries per target and notification before the send is recorded as failed (exponential backoff with jitter)."""
    timeout: Seconds = 10.0
    """Seconds one try may take (an HTTP request, an SMTP session, the command)."""

    @model_validator(mode="after")
    def _targets(self) -> NotifyConfig:
        if self.webhook is not None and not _WEBHOOK.match(self.webhook):
            raise ConfigError(
                f"notify.webhook: expected an http(s) URL or $NAME (an environment variable), got {self.webhook[:40]!r}"
            )
        if len(set(self.events)) != len(self.events):
            raise ConfigError("notify.events: an event is listed twice; list each once")
        return self

    @property
    def has_targets(self) -> bool:
        return bool(self.webhook or self.command or self.email)


class TrackingConfig(Schema):
    """Where the trackers named in `trackers` write. The supervisor mirrors the database into them (no tracker code
    in the training process); one tracker run per tamer run, across every attempt and resume."""

    tensorboard_dir: str | None = None
    """TensorBoard event files' folder; null = RUN_DIR/tensorboard (`tensorboard --logdir HOME/runs` shows every run)."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (a server's http URL, or a folder for a file store); null = the file store HOME/mlruns."""
    experiment: str = "tamer"
    """MLflow experiment and W&B project of the runs."""
    wandb_entity: str | None = None
    """W&B entity (user or team); null = the account's default."""
    wandb_mode: Literal["auto", "online", "offline"] = "auto"
    """`auto` = WANDB_MODE when set, else online when WANDB_API_KEY is set, else offline (files under RUN_DIR/wandb,
    uploaded later with `wandb sync`)."""


class RunConfig(Schema):
    """One training run, as the user asked for it. Every key is marked (`json_schema_extra={"result": ...}`, see
    RESULT_MARKS) as deciding the training result or not; config_hash is derived from the marks."""

    recipe: Literal["squad", "chat", "instruct", "text"] = Field("squad", json_schema_extra={"result": True})
    """Which recipe trains: `squad` (SQuAD v1.1 questions), `chat` (conversations with a chat template), `instruct`
    (prompt/completion pairs), `text` (plain documents); the command's first argument (`tamer run chat`)."""
    preset: str = Field("llama-3.2-1b", json_schema_extra={"result": True})
    """The preset this config started from."""
    model: str = Field("meta-llama/Llama-3.2-1B", json_schema_extra={"result": True})
    """Hub id or local directory of the model (with `init: random`, only a name)."""
    init: Literal["pretrained", "random"] = Field("pretrained", json_schema_extra={"result": True})
    """`pretrained` loads weights with from_pretrained; `random` builds `architecture` with seeded random weights."""
    architecture: dict[str, Any] | None = Field(None, json_schema_extra={"result": True})
    """LlamaConfig fields for `init: random`."""
    tokenizer: str | None = Field(None, json_schema_extra={"result": True})
    """Hub id or directory of the tokenizer; null = the model's; `bundled` = the Mistral-v1 tokenizer shipped with tamer."""
    data: str | None = Field(None, json_schema_extra={"result": True})
    """squad: null = `rajpurkar/squad` from the hub, `bundled` = the SQuAD slice shipped with tamer, else a SQuAD v1.1 JSON
    file. chat, instruct, text: a .jsonl/.json/.parquet/.csv file (.txt for text), a folder of them, `hub:NAME[:SUBSET]`,
    or `bundled` (the recipe's sample shipped with tamer)."""
    eval_data: str | None = Field(None, json_schema_extra={"result": "when_set"})
    """chat, instruct, text: validation rows from another source (the forms of `data`), every row of it; null = rows held
    out of `data` (`validation_split`, else `eval_samples`)."""
    split: str = Field("train", json_schema_extra={"result": "when_set"})
    """chat, instruct, text: the split of a hub dataset (`data: hub:NAME`) to train on."""
    eval_split: str = Field("validation", json_schema_extra={"result": "when_set"})
    """chat, instruct, text: the split of a hub dataset given as `eval_data`."""
    validation_split: Annotated[Number, Field(gt=0, lt=1)] | None = Field(
        None, json_schema_extra={"result": "when_set"}
    )
    """chat, instruct, text: hold out this fraction of `data`'s rows (seeded by `seed`: the same rows on every attempt)
    instead of `eval_samples` rows."""
    columns: dict[str, str] | None = Field(None, json_schema_extra={"result": "when_set"})
    """chat, instruct, text: which of the data's columns hold what, e.g. {prompt: question, completion: answer}. Keys:
    chat messages, answers; instruct prompt, completion, input, answers; text text."""
    chat_template: str | None = Field(None, json_schema_extra={"result": "when_set"})
    """chat: a Jinja template file or a built-in (`chatml`); null = the tokenizer's own (an error when it has none)."""
    train_on: Literal["assistant", "all", "last_assistant"] = Field(
        "assistant", json_schema_extra={"result": "when_set"}
    )
    """chat: which tokens the loss scores: every assistant turn, every token, or the last assistant turn."""
    prompt_template: str | None = Field(None, json_schema_extra={"result": "when_set"})
    """instruct: the text around each prompt, with `{prompt}` and optionally `{input}`; null = `### Instruction:\n{prompt}\n\n
    ### Response:\n` (and `### Input:\n{input}\n\n` before the response for a row with an input)."""
    overlong: Literal["truncate", "skip", "error"] = Field("truncate", json_schema_extra={"result": "when_set"})
    """chat, instruct: an example over max_seq_len keeps its first max_seq_len tokens or is skipped (both counted in the
    `data` event), or is an error before the run is registered."""
    max_seq_len: int = Field(512, ge=1, json_schema_extra={"result": True})
    """Longest example in tokens; longer ones lose context (never the answer) or are skipped and counted."""
    compile: bool | Literal["auto"] = Field("auto", json_schema_extra={"result": False})
    """torch.compile each decoder layer (true/false; `auto` = on for CUDA plans without int8 weights, LoRA adapters or
    several processes, whose layers cost far longer to compile than they save). Faster forward and backward and a little
    less memory; each new batch shape costs one compile (seconds), so it pays with few shapes (length buckets, packing).
    Measured: docs/mechanisms/batches.md."""
    optimizer_kernel: Literal["auto", "bitsandbytes"] = Field("auto", json_schema_extra={"result": False})
    """Who steps the 8-bit AdamW flavours: `auto` = tamer's Triton kernel on CUDA when triton is installed (bitsandbytes'
    state and arithmetic, about 3x faster: docs/mechanisms/eight-bit-step.md), else bitsandbytes' CUDA kernels;
    `bitsandbytes` = always bitsandbytes'. Checkpoints load either way."""
    cudnn_attention: bool | Literal["auto"] = Field("auto", json_schema_extra={"result": False})
    """Whether PyTorch's attention (SDPA) may use cuDNN's kernels: `auto` = only where every batch has one shape
    (`batching: max_len`), never while decoding for EM/F1. cuDNN builds a plan for each new shape (a fraction of a second
    each, bench/new_length.py), which a run of packed rows meets up to ~64 times; without it SDPA takes PyTorch's
    memory-efficient kernel."""
    pad_to_max_len: bool = Field(False, json_schema_extra={"result": True})
    """Pad every batch to max_seq_len (fixed shapes: predictable memory, as in benchmarks); the same as `batching: max_len`."""
    batching: Literal["longest", "max_len", "bucket", "packed"] = Field("packed", json_schema_extra={"result": True})
    """How a micro-batch's samples become tensors (tamer/engine/batching.py): `packed` = one row, no padding but the
    tail to `batch_multiple`, attention kept within each sample; `bucket` = padded to the longest rounded up to
    `batch_multiple`; `longest` = padded to the longest (a new shape nearly every step: slow under a memory cap);
    `max_len` = padded to max_seq_len (2-3x the real tokens). `bucket` and `packed` also group the data order by length."""
    batch_multiple: int = Field(64, ge=1, json_schema_extra={"result": True})
    """Row lengths of `bucket` and `packed` are multiples of this: larger = fewer distinct shapes, more padding."""
    length_window: int = Field(64, ge=1, json_schema_extra={"result": True})
    """`bucket`/`packed`: samples are grouped by length within windows of this many optimizer steps (1 = only within a
    step); larger = steps of more similar lengths (less padding), the order farther from a plain shuffle."""
    effective_batch_size: int = Field(8, ge=1, json_schema_extra={"result": True})
    """Sequences per optimizer step; constant across every plan change."""
    micro_batch_size: int = Field(8, ge=1, json_schema_extra={"result": False})
    """Sequences per forward/backward in the first plan (accumulation = effective / micro)."""
    learning_rate: Number = Field(2e-5, gt=0, json_schema_extra={"result": True})
    """Peak AdamW learning rate."""
    weight_decay: Number = Field(0.0, json_schema_extra={"result": True})
    """AdamW weight decay."""
    warmup_ratio: Number = Field(0.03, ge=0, lt=1, json_schema_extra={"result": True})
    """Fraction of the optimizer steps spent warming up (linear) before the cosine decay."""
    max_grad_norm: Number = Field(1.0, json_schema_extra={"result": True})
    """Gradient clipping norm."""
    epochs: int = Field(1, ge=1, json_schema_extra={"result": True})
    """Passes over the training data (unless max_steps comes first)."""
    max_steps: Annotated[int, Field(ge=1)] | None = Field(None, json_schema_extra={"result": True})
    """Stop after this many optimizer steps."""
    seed: int = Field(0, json_schema_extra={"result": True})
    """Seed for data order, random init and RNGs."""
    torch_threads: Annotated[int, Field(ge=1)] | None = Field(None, json_schema_extra={"result": False})
    """CPU threads torch uses in each training process. null = the CPUs this process may use divided by the
    processes per node, less one left to the checkpoint writer and the supervisor (when that leaves at least one),
    fixed when the run is created. Recorded with the run and reapplied on every attempt:
    float sums reassociate with the thread count, so bit-exact resume needs the same one."""
    eval_every: int | None = Field(None, json_schema_extra={"result": True})
    """Validation loss every N optimizer steps (always at the end)."""
    eval_samples: int = Field(256, json_schema_extra={"result": True})
    """Size of the held-out validation slice."""
    eval_batch_size: int = Field(8, ge=1, json_schema_extra={"result": True})
    """Sequences per evaluation forward."""
    checkpoint_every: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", json_schema_extra={"result": True})
    """Checkpoint every N optimizer steps (and at the end); `auto`: chosen from the measured cost of a
    save and the run's failure rate, so saves take <= 2% of training and <= 10 min of work is at risk."""
    checkpoint_every_seconds: Annotated[Number, Field(gt=0)] | None = Field(None, json_schema_extra={"result": False})
    """Also checkpoint when this many seconds passed since the last save (with `auto` or an integer)."""
    checkpoint_async: bool = Field(True, json_schema_extra={"result": False})
    """Write checkpoints in the background: training stalls only to copy the state to host memory,
    which costs host RAM the size of a checkpoint (falls back to synchronous when it does not fit)."""
    keep_checkpoints: int = Field(2, ge=2, json_schema_extra={"result": True})
    """How many checkpoints to keep (>= 2, so a torn one always has a predecessor)."""
    max_restarts: int = Field(10, ge=0, json_schema_extra={"result": False})
    """Restarts after failures that escalation cannot fix (crash, hang) before the run is `failed`."""
    restart_backoff: Number = Field(2.0, ge=0, json_schema_extra={"result": False, "unit": "seconds"})
    """Seconds before the first such restart; doubles each time (exponential backoff)."""
    restart_backoff_max: Number = Field(120.0, ge=0, json_schema_extra={"result": False, "unit": "seconds"})
    """Longest wait between restarts, in seconds."""
    crash_loop_limit: int = Field(3, ge=2, json_schema_extra={"result": False})
    """The same failure at the same step this many times in a row, with no progress: the run is `failed`."""
    healthy_seconds: Number = Field(600.0, json_schema_extra={"result": False})
    """An attempt that trained this long resets the restart budget."""
    kill_backoff: Number = Field(5.0, ge=0, json_schema_extra={"result": False, "unit": "seconds"})
    """Seconds before restarting a child killed from outside (a SIGKILL/SIGTERM tamer did not send, not the
    OOM killer); doubles with each such kill in a row. These restarts never give up and do not count toward
    max_restarts or crash_loop_limit: an operator's or a scheduler's kill is not a bug."""
    kill_backoff_max: Number = Field(600.0, ge=0, json_schema_extra={"result": False, "unit": "seconds"})
    """Longest wait between restarts after outside kills, in seconds."""
    disk_full_wait: Number = Field(3600.0, ge=0, json_schema_extra={"result": False, "unit": "seconds"})
    """When the disk fills up (the child dies of ENOSPC), wait up to this many seconds for space to come back, then
    resume on the same plan; the run says so as an event. 0 = end the run `failed` at once. A file-size limit
    (ulimit -f) is never waited for: no time frees it."""
    start_rungs: list[str] = Field(default_factory=list, json_schema_extra={"result": False})
    """Rungs applied to the first plan (e.g. [lora] when you know the model needs it)."""
    start_plan: dict[str, Any] | None = Field(None, json_schema_extra={"result": False})
    """The exact first plan (Plan fields, as `tamer plan --json` prints them); overrides the planner and start_rungs."""
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra={"result": False})
    """Where to train: `auto` = the GPU when there is one."""
    gpu_mem_cap: ByteSize | None = Field(None, json_schema_extra={"result": False})
    """Cap the child's GPU memory (e.g. `15GiB`) with set_per_process_memory_fraction."""
    host_mem_cap: ByteSize | None = Field(None, json_schema_extra={"result": False})
    """Cap the child's address space growth after setup (RLIMIT_AS), e.g. `2GiB`: a real host OOM on purpose."""
    memory_snapshot: bool = Field(False, json_schema_extra={"result": False})
    """Record the CUDA allocator's history and dump a snapshot on an OOM (for PyTorch's memory_viz); a little slower, more host memory."""
    inject: list[str] = Field(default_factory=list, json_schema_extra={"result": False})
    """Faults to rehearse recovery, e.g. `oom:step=5,phase=backward,min_micro_batch=8` (docs/troubleshooting.md, rehearsing failures)."""
    progress_every_seconds: Number = Field(30.0, ge=1, json_schema_extra={"result": False})
    """Without a terminal (piped, nohup, systemd): print a progress line at least this often while steps advance; costs nothing."""
    progress_every_steps: int = Field(50, ge=1, json_schema_extra={"result": False})
    """Without a terminal: also print a progress line every N optimizer steps."""
    lora: LoraConfig = Field(default_factory=LoraConfig, json_schema_extra={"result": True})
    ladder: LadderConfig = Field(default_factory=LadderConfig, json_schema_extra={"result": False})
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig, json_schema_extra={"result": False})
    planner: PlannerConfig = Field(default_factory=PlannerConfig, json_schema_extra={"result": False})
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, json_schema_extra={"result": False})
    eval: EvalConfig = Field(default_factory=EvalConfig, json_schema_extra={"result": False})
    export: ExportConfig = Field(default_factory=ExportConfig, json_schema_extra={"result": False})
    deescalate: DeescalateConfig = Field(default_factory=DeescalateConfig, json_schema_extra={"result": False})
    notify: NotifyConfig = Field(default_factory=NotifyConfig, json_schema_extra={"result": False})
    """Notifications of this run (see NotifyConfig); HOME/notify.yaml adds the home's."""
    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, json_schema_extra={"result": False}
    )
    """Trackers the supervisor mirrors steps, evaluations and events into (install `tamer[tensorboard]`, `tamer[mlflow]`,
    `tamer[wandb]`); a missing one is a config error before the run starts."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, json_schema_extra={"result": False})
    """Where the trackers write (see TrackingConfig)."""

    @model_validator(mode="after")
    def _trackers_once(self) -> RunConfig:
        if len(set(self.trackers)) != len(self.trackers):
            raise ConfigError("trackers: a tracker is listed twice; list each once")
        return self

    FOREIGN_NAMES = FOREIGN_NAMES

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        """Checks across keys (each key's own bounds are declared on it)."""
        if self.effective_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"micro_batch_size: {self.micro_batch_size} does not divide effective_batch_size "
                f"{self.effective_batch_size}; pick a divisor"
            )
        world = self.distributed.world_size
        if self.effective_batch_size % world:
            raise ConfigError(
                f"effective_batch_size: {self.effective_batch_size} sequences cannot be shared evenly by {world} processes; "
                f"use a multiple of {world} or fewer GPUs"
            )
        for index, name in enumerate(self.start_rungs):
            if name in self.start_rungs[:index]:
                raise ConfigError(f"start_rungs[{index}]: '{name}' is listed twice; list each rung once")
            if name not in registry.names():
                raise ConfigError(
                    f"start_rungs[{index}]: unknown rung '{name}'; known rungs: {', '.join(registry.names())}"
                )
            if name not in self.ladder.order and name != "chunked_loss":  # the planner may always chunk the loss
                raise ConfigError(
                    f"start_rungs[{index}]: '{name}' is not in ladder.order, which forbids it; "
                    "add it to ladder.order or drop it from start_rungs"
                )
        if self.start_plan is not None:
            # strict: an unknown key or a wrong value is an error, never silently ignored
            plan = Plan.from_dict(
                {"eval_batch_size": self.eval_batch_size, "world_size": world, **self.start_plan}, "start_plan."
            )
            if plan.effective_batch_size != self.effective_batch_size:
                raise ConfigError(
                    f"start_plan: micro_batch_size x grad_accumulation x world_size = {plan.effective_batch_size}, "
                    f"but effective_batch_size is {self.effective_batch_size}"
                )
        for name in ("gpu_mem_cap", "host_mem_cap"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name}: {getattr(self, name)} is no memory at all; give a size such as 15GiB, or leave it out for no cap"
                )
        if self.init == "random" and not self.architecture:
            raise ConfigError("architecture: `init: random` needs the model's architecture (LlamaConfig fields)")
        parse_faults(self.inject)
        self._data_keys()
        return self

    def _data_keys(self) -> None:
        """Keys of the data recipes set where the recipe reads none of them: an error, not a silent no-op."""
        defaults = type(self).model_fields
        for name, recipes in DATA_KEYS.items():
            if self.recipe not in recipes and getattr(self, name) != defaults[name].default:
                raise ConfigError(
                    f"{name}: applies to the {' and '.join(recipes)} recipe{'s' if len(recipes) > 1 else ''}, "
                    f"not {self.recipe}; remove it"
                )
        if self.eval_data is not None and self.validation_split is not None:
            raise ConfigError("validation_split: eval_data already gives the validation rows; set one of them")
        if self.prompt_template is not None and "{prompt}" not in self.prompt_template:
            raise ConfigError(
                "prompt_template: has no {prompt} placeholder; write where the prompt goes, e.g. "
                "'Question: {prompt}\nAnswer: '"
            )
        if self.eval.em_f1 and self.recipe not in ("chat", "instruct"):
            raise ConfigError(
                f"eval.em_f1: scores chat and instruct replies; the {self.recipe} recipe "
                + ("is scored by eval.squad_samples" if self.recipe == "squad" else "has only the validation loss")
            )

    def learning_rate_for(self, plan: Any) -> float:
        """The peak learning rate of `plan`: `lora.learning_rate` when it trains LoRA adapters, else `learning_rate`."""
        return self.lora.learning_rate if plan.lora else self.learning_rate

    def learning_rate_change(self, old: Any, new: Any) -> str | None:
        """`learning rate 2e-05 -> 0.0002 for LoRA adapters` when going from plan `old` to `new` changes it, else None."""
        before, after = self.learning_rate_for(old), self.learning_rate_for(new)
        if before == after:
            return None
        return f"learning rate {before:g} -> {after:g} for " + ("LoRA adapters" if new.lora else "the full model")

    @property
    def batching_mode(self) -> str:
        """The batching in force: `pad_to_max_len: true` means `max_len` whatever `batching` says."""
        return "max_len" if self.pad_to_max_len else self.batching

    @property
    def grad_accumulation(self) -> int:
        return self.effective_batch_size // self.micro_batch_size

    def rank_geometry(self) -> tuple[int, int]:
        """(micro-batch, accumulation) of each process's first plan: its share of the effective batch
        (effective / world size) cut into micro-batches no larger than `micro_batch_size`."""
        share = self.effective_batch_size // self.distributed.world_size
        micro = max(size for size in range(1, min(share, self.micro_batch_size) + 1) if share % size == 0)
        return micro, share // micro

    def with_threads_fixed(self) -> RunConfig:
        """This config with `torch_threads` decided: the CPUs this process may use, shared by the node's processes."""
        if self.torch_threads is not None:
            return self
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        share = available // self.distributed.nproc_per_node
        # One core is left to the background checkpoint writer and the supervisor: on 2 cores, two OpenMP threads
        # spinning against the writer made CPU steps ~10x slower while a checkpoint was written.
        return self.model_copy(update={"torch_threads": max(1, share - 1 if share >= 2 else share)})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (sizes as written), as stored in the runs table; `config_from_dict` reads it back."""
        return self.model_dump()

    def config_hash(self) -> str:
        """Hash of what decides the training result: the keys marked `result: True`, and those marked `when_set`
        when they differ from their default (keys of the data recipes: unset, as in every config before they
        existed, the hash stays what it was). Restarts, caps, injected faults, output and notification keys
        (`result: False`) do not count; every key carries a mark (RESULT_MARKS, tests/unit/test_config_hash.py)."""
        data = self.to_dict()
        for name, field in type(self).model_fields.items():
            mark = result_mark(field)
            if mark is False or (mark == "when_set" and data[name] == field.default):
                data.pop(name)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


RESULT_MARKS = (True, False, "when_set")
"""The marks a RunConfig key carries in `json_schema_extra["result"]`: it decides the training result (True), it does
not (False: how the run is kept alive, capped, reported, exported), or it does only when set (`when_set`)."""


def result_mark(field: Any) -> bool | str | None:
    """A RunConfig field's result mark (None when it has none, which a test forbids)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return extra.get("result")


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{key}' is not a mapping")
        node = child
    node[keys[-1]] = value


def parse_set(item: str) -> tuple[str, Any]:
    """`key.path=value` -> (path, YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected key=value, e.g. --set lora.r=8")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item}: missing key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path`, or a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"--config {path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of keys at the top level")
    return data


def build_config(
    preset: str = "llama-3.2-1b",
    config_file: str | Path | None = None,
    options: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """The validated RunConfig for a preset, a YAML file, CLI options (None = not given) and --set items."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset}: unknown preset; choose one of {', '.join(PRESETS)}")
    if preset == "tiny" and (options or {}).get("model") is not None:
        raise ConfigError(
            f"--model {options['model']}: the tiny preset trains its own random tiny model and would ignore it; "
            "use --preset llama-3.2-1b --model MODEL (add --init random for random weights)"
        )
    data: dict[str, Any] = json.loads(json.dumps(PRESETS[preset]))
    data["preset"] = preset
    file_data = load_yaml(config_file) if config_file is not None else {}
    if "preset" in file_data and file_data["preset"] != preset:
        other = file_data.pop("preset")
        if other not in PRESETS:
            raise ConfigError(f"preset: unknown preset '{other}'; choose one of {', '.join(PRESETS)}")
        data = json.loads(json.dumps(PRESETS[other]))
        data["preset"] = other
    recipe = (options or {}).get("recipe") or file_data.get("recipe") or "squad"
    data.update(json.loads(json.dumps(RECIPE_DEFAULTS.get(data["preset"], {}).get(recipe, {}))))
    data.update(file_data)
    for key, value in (options or {}).items():
        if value is not None:
            _set_path(data, key, value)
    for item in sets or []:
        key, value = parse_set(item)
        _set_path(data, key, value)
    if "micro_batch_size" not in data and "effective_batch_size" in data:
        data["micro_batch_size"] = data["effective_batch_size"]
    return RunConfig.from_mapping(data)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A RunConfig from its stored dict (as in the runs table)."""
    return RunConfig.from_mapping(data)
