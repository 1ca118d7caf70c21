"""Peak GPU memory of a plan, phase by phase, by arithmetic: no torch, no GPU, microseconds per plan.

    estimate(ModelShape.from_architecture(config.architecture), plan, Workload.from_config(config))

The model is what PyTorch, transformers (Llama, sdpa attention), peft and bitsandbytes actually keep
alive during one training step, counted tensor by tensor (see `_layer_bytes_per_token`):

- weights: 4 or 2 bytes per parameter (fp32 / pure bf16); int8 base = 1 byte per linear weight plus
  an fp32 scale per output row; NF4 base (double quantization, bitsandbytes' storage layout, see
  `nf4_bytes`) = half a byte per linear weight plus one 8-bit absmax per 64 weights, one fp32 absmax per 256
  of those, and the two code books; either way embeddings, norms and lm_head stay unquantized in fp32
  (`prepare_model_for_kbit_training` upcasts them). LoRA adapters: rank x (in + out) per targeted
  linear, fp32 (peft upcasts 16-bit adapters).
- gradients: one per trainable parameter, in the parameter's dtype. A frozen base has none.
- optimizer states: torch AdamW = two moments in the parameter's dtype (8 bytes per fp32 parameter)
  plus one moment-sized temporary during the foreach step; bitsandbytes 8-bit AdamW = 2 bytes per
  parameter + two fp32 absmax per 256-element block, 32-bit moments for tensors under 4,096
  elements; the paged variant puts moments of tensors >= 100,000 elements in CUDA managed memory,
  outside PyTorch's allocator (`pageable`: the driver evicts them to host memory instead of failing,
  so they are not counted in the peak).
- activations per micro-batch of T = micro_batch x seq tokens: every tensor autograd saves in a
  decoder layer (norm inputs and outputs, linear inputs or their autocast copies, attention q/k/v/out,
  MLP intermediates, LoRA dropout masks and inputs). With gradient checkpointing only each layer's
  input [T x hidden] in the residual dtype is kept, plus one layer's full activations while it is
  recomputed in backward.
- int8 layer inputs: bitsandbytes' int8 matmul keeps each input on its autograd node, outside the
  tensors that checkpointing drops and backward frees, so they live as long as the graph: through
  backward and the optimizer step (the trainer holds `loss` until the step returns), and twice during
  forward with accumulation (the previous micro-batch's graph goes when the new loss replaces it).
- NF4 layers (bitsandbytes 0.50's MatMul4Bit) keep nothing of their input (the frozen weight needs none)
  and return the input's dtype; each matmul dequantizes its weight whole to the compute dtype (forward)
  or to the dtype it was loaded in, then the gradient's (backward): `dequantized_weight` is the largest
  projection's copies during a layer's backward. Calibration against an NF4 run on a GPU is pending
  (bench/reach.py); the layout itself is checked against bitsandbytes on a CPU (tests/unit/test_four_bit.py).
- autocast weight copies: under autocast, fp32 weights that require grad are cast once per forward
  and cached until the autocast region ends (2 bytes per linear parameter and for lm_head).
- logits: N positions x vocab. The LM head output, its fp32 upcast and the log-softmax output in
  forward (2 fp32 copies at once), then log-softmax output + its gradient + the logits' gradient in
  backward (3 fp32 copies). `logits_tokens="supervised"` (tamer's loss, tamer/engine/loss.py) uses
  only the supervised positions; `"all"` is the Hugging Face loss over every position (which also
  keeps the head output alive in the model's output). A chunked loss holds one slice of 1,024.

Several processes (plan.world_size > 1): each rank holds its own micro-batches' activations. Under
DDP the gradients live from the start (they are views into DDP's all-reduce buckets), in every phase.
Under FSDP (FSDP2, one unit per decoder layer and the root) weights, gradients and optimizer states
are divided by the world size, plus what is gathered whole: the root's parameters (embeddings, the
tied head, final norm) and two decoder layers (the one running and the one prefetched); loading is
not sharded (every rank loads the whole model, then shards it).

Phases: load, forward (end of forward, logits live), backward (the worse of the loss backward and the
end of backward, when every gradient exists), optimizer. Steady state: from the second step on the
optimizer states exist in every phase; with accumulation > 1 so do the gradients during forward.

Allocated bytes become reserved bytes through a fragmentation factor, and the device needs the CUDA
context on top (`CUDA_CONTEXT_BYTES`). Checked against bench/results/anchors-h100-2026-11-25.md and against tamer's own training
step measured on an H100 (tests/unit/test_planner.py prints predicted vs measured for both).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tamer.plan import LOSS_CHUNK_TOKENS, PAGED_MIN_ELEMENTS, Plan

GIB = 2**30

CUDA_CONTEXT_BYTES = GIB // 2
"""Device memory the child uses outside PyTorch's caching allocator: the CUDA context, cuBLAS/cuDNN
handles and loaded kernels (0.3-0.6 GiB with torch 2.x on an H100). It counts against a card's
memory, not against an allocator cap (`set_per_process_memory_fraction` limits the allocator only)."""

FRAGMENTATION = 0.06
"""Reserved / allocated - 1 with the default caching allocator: blocks cached for sizes that do not
recur (0.03-0.08 in the anchor runs (bench/results/anchors-h100-2026-11-25.md))."""

FRAGMENTATION_EXPANDABLE = 0.03
"""The same with expandable segments, which map freed memory back into one growing segment."""

SUPERVISED_PER_SEQUENCE = 16
"""Default supervised tokens per sequence (answer + EOS). SQuAD answers are 3-10 tokens; 16 is a
conservative ceiling, so the supervised-only logits are never underestimated for this recipe."""

EIGHT_BIT_MIN_ELEMENTS = 4096
"""bitsandbytes keeps 32-bit moments for tensors smaller than this (min_8bit_size)."""

EIGHT_BIT_BLOCK = 256
"""bitsandbytes block-wise 8-bit moments: one fp32 absmax per block of this many elements, per moment."""

NF4_BLOCK = 64
"""Weights per absmax of an NF4 tensor (transformers' BitsAndBytesConfig loads 4-bit weights with blocksize 64)."""
NF4_NESTED_BLOCK = 256
"""Double quantization: the absmaxes are themselves quantized to 8 bits, one fp32 absmax per this many of them."""
NF4_TENSOR_CONSTANTS = 4 * (256 + 16 + 1)
"""Per NF4 tensor: the 8-bit dynamic code book of the nested absmaxes (256 fp32), the NF4 code book (16 fp32) and the
absmax offset (one fp32)."""

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

PHASES = ("load", "forward", "backward", "optimizer")
STATIC_COMPONENTS = ("weights", "adapters")
"""The model itself: what a memory-saving rung cannot attack (PhaseEstimate.dominant looks past them)."""
EXACT_COMPONENTS = (*STATIC_COMPONENTS, "gradients", "optimizer_states", "embedding_gradient")
"""Components known exactly from the parameter count and dtypes; after an OOM only the others (activations,
logits, workspaces, autocast copies: what depends on kernels and the allocator) are scaled."""

LogitsTokens = Literal["all", "supervised"]


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama architecture that decide memory (from a LlamaConfig-style dict)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    """Biases on q, k, v and o (Llama's `attention_bias`)."""
    mlp_bias: bool = False
    qkv_bias: bool = False
    """Biases on q, k and v only: Qwen2 (its config.json does not say so; its model type does)."""

    @classmethod
    def from_architecture(cls, architecture: Mapping[str, Any]) -> ModelShape:
        """The shape of `architecture` (LlamaConfig fields, or a Llama/Mistral/Qwen2/Qwen3 config.json); missing keys
        take LlamaConfig's defaults. Qwen3's per-head q/k norms (2 x head_dim weights a layer) are left out."""
        hidden = int(architecture.get("hidden_size", 4096))
        heads = int(architecture.get("num_attention_heads", 32))
        return cls(
            vocab_size=int(architecture.get("vocab_size", 32000)),
            hidden_size=hidden,
            intermediate_size=int(architecture.get("intermediate_size", 11008)),
            num_layers=int(architecture.get("num_hidden_layers", 32)),
            num_heads=heads,
            num_kv_heads=int(architecture.get("num_key_value_heads") or heads),
            head_dim=int(architecture.get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(architecture.get("tie_word_embeddings", False)),
            attention_bias=bool(architecture.get("attention_bias", False)),
            mlp_bias=bool(architecture.get("mlp_bias", False)),
            qkv_bias=architecture.get("model_type") == "qwen2",
        )

    def key(self) -> str:
        """A short hash of the shape: runs of the same shape share calibration data."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        hidden, attention, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "q_proj": (hidden, attention),
            "k_proj": (hidden, kv),
            "v_proj": (hidden, kv),
            "o_proj": (attention, hidden),
            "gate_proj": (hidden, self.intermediate_size),
            "up_proj": (hidden, self.intermediate_size),
            "down_proj": (self.intermediate_size, hidden),
        }

    def tensors(self) -> list[tuple[str, int, bool]]:
        """Every parameter as (name, elements, quantizable), named as transformers names them."""
        return list(_tensors(self))

    @property
    def parameters(self) -> int:
        return _counts(self)[0]

    @property
    def linear_parameters(self) -> int:
        """Weights of the decoder layers' linear layers (what int8 quantizes)."""
        return _counts(self)[1]

    @property
    def head_parameters(self) -> int:
        """The LM head's weight (the embedding itself when tied)."""
        return self.vocab_size * self.hidden_size

    def lora_parameters(self, rank: int, targets: tuple[str, ...]) -> int:
        return sum(elements for _, elements in _lora_tensors(self, rank, tuple(targets)))


@functools.cache
def _tensors(shape: ModelShape) -> tuple[tuple[str, int, bool], ...]:
    found = [("model.embed_tokens.weight", shape.vocab_size * shape.hidden_size, False)]
    for layer in range(shape.num_layers):
        for name, (fan_in, fan_out) in shape.projections().items():
            module = f"model.layers.{layer}.{'self_attn' if name[0] in 'qkvo' else 'mlp'}.{name}"
            found.append((f"{module}.weight", fan_in * fan_out, True))
            attention = name[0] in "qkvo"
            biased = (shape.attention_bias or (shape.qkv_bias and name != "o_proj")) if attention else shape.mlp_bias
            if biased:
                found.append((f"{module}.bias", fan_out, False))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            found.append((f"model.layers.{layer}.{norm}.weight", shape.hidden_size, False))
    found.append(("model.norm.weight", shape.hidden_size, False))
    if not shape.tie_word_embeddings:
        found.append(("lm_head.weight", shape.vocab_size * shape.hidden_size, False))
    return tuple(found)


@functools.cache
def _counts(shape: ModelShape) -> tuple[int, int]:
    tensors = _tensors(shape)
    return sum(n for _, n, _ in tensors), sum(n for _, n, quantizable in tensors if quantizable)


@functools.cache
def _lora_tensors(shape: ModelShape, rank: int, targets: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    found = []
    for layer in range(shape.num_layers):
        for name, (fan_in, fan_out) in shape.projections().items():
            if name in targets:
                found.append((f"layers.{layer}.{name}.lora_A", rank * fan_in))
                found.append((f"layers.{layer}.{name}.lora_B", fan_out * rank))
    return tuple(found)


SQUAD_TOKENS_PER_SEQUENCE = 210
"""Mean tokens of a SQuAD training example (bench/results/anchors-h100-2026-11-25.md, Mistral-v1 tokenizer; 229 on the bundled slice)."""
COMPUTED_PER_USEFUL = {"longest": 1.6, "bucket": 1.14, "packed": 1.02}
"""Computed / useful tokens by batching mode: bench/results/anchors-h100-2026-11-25.md (padding to the longest 1.6x) and the bundled slice in
8-sample steps, length-grouped over 64 steps (bucket of 64: 1.14x, packed: 1.02x)."""


def expected_computed_per_sequence(
    batching: str, max_seq_len: int, mean_tokens: float = SQUAD_TOKENS_PER_SEQUENCE
) -> int:
    """Tokens computed per sequence on average under `batching` (max_len: every position), for sequences of
    `mean_tokens` on average (default: SQuAD's)."""
    if batching not in COMPUTED_PER_USEFUL:
        return max_seq_len
    return min(max_seq_len, round(mean_tokens * COMPUTED_PER_USEFUL[batching]))


@dataclass(frozen=True)
class Workload:
    """What one micro-batch holds, beyond the plan: sequence length, supervised tokens, LoRA shape."""

    sequence_length: int = 512
    """Tokens per sequence (the recipe pads to the longest in the micro-batch; default max_seq_len)."""
    supervised_per_sequence: int = SUPERVISED_PER_SEQUENCE
    """Positions per sequence whose next token is supervised (answer + EOS)."""
    logits_tokens: LogitsTokens = "supervised"
    """`supervised`: tamer's loss (head only at supervised positions); `all`: Hugging Face's loss over
    every position (how bench/results/anchors-h100-2026-11-25.md was measured)."""
    padded: bool = True
    """Batches carry a padding mask: sdpa then repeats K/V to every head (no GQA kernel) and a
    [micro_batch x seq x seq] mask exists. The anchor runs used unpadded fixed-length sequences."""
    batching: str = "longest"
    """The config's batching mode (tamer/engine/batching.py). Memory is for the longest micro-batch either way
    (micro_batch x sequence_length tokens: a length-grouped step can be all long samples); `packed` has one
    [tokens x tokens] block-diagonal mask instead of a per-row padding mask."""
    computed_per_sequence: int | None = None
    """Tokens computed per sequence on average, for speed (bucket/packed: about the mean example length;
    None = sequence_length). Computed tokens per question decide questions/s on a compute-bound card."""
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = PROJECTIONS
    lora_dropout: bool = True
    """LoRA dropout > 0: peft keeps a dropout mask and a dropped copy of each adapter input."""

    @classmethod
    def from_config(cls, config: Any, data: Any = None, **overrides: Any) -> Workload:
        """The workload of a RunConfig: its max_seq_len and LoRA settings, the defaults otherwise. `data` (a
        DataProfile of the run's examples, tamer/recipes/profile.py) sizes it on them: sequences as long as the
        longest (rounded up to batch_multiple, at most max_seq_len; all of max_seq_len for `max_len` batches),
        speed at their mean length, and at least their most scored tokens per sequence at the LM head."""
        values = {
            "sequence_length": config.max_seq_len,
            "batching": config.batching_mode,
            "computed_per_sequence": expected_computed_per_sequence(config.batching_mode, config.max_seq_len),
            "lora_rank": config.lora.r,
            "lora_targets": tuple(config.lora.target_modules),
            "lora_dropout": config.lora.dropout > 0,
        }
        if data is not None:
            longest = -(-max(1, data.max_tokens) // config.batch_multiple) * config.batch_multiple
            if config.batching_mode != "max_len":
                values["sequence_length"] = min(config.max_seq_len, longest)
            values["computed_per_sequence"] = expected_computed_per_sequence(
                config.batching_mode, config.max_seq_len, data.mean_tokens
            )
        values.update({key: value for key, value in overrides.items() if value is not None})
        if data is not None:
            values["supervised_per_sequence"] = max(
                values.get("supervised_per_sequence", SUPERVISED_PER_SEQUENCE), data.max_scored
            )
        return cls(**values)


@dataclass(frozen=True)
class PhaseEstimate:
    """Bytes allocated at the worst moment of one phase, by component."""

    name: str
    components: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def static(self) -> int:
        return sum(self.components.get(name, 0) for name in STATIC_COMPONENTS)

    def dominant(self) -> str:
        """The largest component besides the weights: what a memory-saving rung should attack."""
        varying = {name: size for name, size in self.components.items() if name not in STATIC_COMPONENTS and size}
        return max(varying, key=varying.__getitem__) if varying else "weights"

    def sum_of(self, names: tuple[str, ...]) -> int:
        return sum(self.components.get(name, 0) for name in names)

    def scaled(self, factor: float, kept: tuple[str, ...] = EXACT_COMPONENTS) -> PhaseEstimate:
        """This phase with every component but `kept` multiplied by `factor`."""
        return PhaseEstimate(
            self.name, {name: size if name in kept else round(size * factor) for name, size in self.components.items()}
        )


@dataclass(frozen=True)
class Estimate:
    """A plan's predicted memory: per phase (allocated), its peak, reserved and on the device."""

    plan: Plan
    phases: dict[str, PhaseEstimate]
    fragmentation: float
    pageable: int = 0
    """Paged optimizer state in CUDA managed memory: on the device while there is room, else on the host."""
    correction: float = 1.0
    """Multiplier from calibration against measured peaks (tamer/planner/calibrate.py)."""

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=lambda name: self.phases[name].total)

    @property
    def allocated(self) -> int:
        """Peak bytes allocated by PyTorch (as torch.cuda.max_memory_allocated)."""
        return round(self.phases[self.peak_phase].total * self.correction)

    @property
    def reserved(self) -> int:
        """Peak bytes reserved by PyTorch's caching allocator (as torch.cuda.max_memory_reserved)."""
        return round(self.allocated * (1 + self.fragmentation))

    @property
    def device(self) -> int:
        """Peak device memory the child needs: reserved plus the CUDA context."""
        return self.reserved + CUDA_CONTEXT_BYTES

    def reserved_in(self, phase: str) -> int:
        return round(self.phases[phase].total * self.correction * (1 + self.fragmentation))

    def where(self) -> str:
        """`backward: logits`: the peak phase and what dominates it."""
        phase = self.peak_phase
        return f"{phase}: {self.phases[phase].dominant().replace('_', ' ')}"

    def with_phase_scaled(self, phase: str, factor: float, kept: tuple[str, ...] = EXACT_COMPONENTS) -> Estimate:
        phases = dict(self.phases)
        phases[phase] = phases[phase].scaled(factor, kept)
        return dataclasses.replace(self, phases=phases)

    def with_correction(self, correction: float) -> Estimate:
        return dataclasses.replace(self, correction=correction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "peak_phase": self.peak_phase,
            "dominant": self.phases[self.peak_phase].dominant(),
            "allocated": self.allocated,
            "reserved": self.reserved,
            "device": self.device,
            "pageable": self.pageable,
            "fragmentation": self.fragmentation,
            "correction": self.correction,
            "phases": {name: dict(phase.components) for name, phase in self.phases.items()},
        }


def supervised_positions(plan: Plan, workload: Workload) -> int:
    """Positions of one micro-batch that reach the LM head."""
    if workload.logits_tokens == "all":
        return plan.micro_batch_size * workload.sequence_length
    per_sequence = min(workload.supervised_per_sequence, workload.sequence_length - 1)
    return plan.micro_batch_size * per_sequence


def logit_positions_at_once(plan: Plan, workload: Workload) -> int:
    """Positions whose logits exist at the same time: all of them, or one slice when chunking applies
    (loss.py chunks only when there are more positions than one slice)."""
    positions = supervised_positions(plan, workload)
    return LOSS_CHUNK_TOKENS if plan.chunked_loss and positions > LOSS_CHUNK_TOKENS else positions


def fp32_logits_bytes(shape: ModelShape, plan: Plan, workload: Workload) -> int:
    """One fp32 [positions x vocab] tensor for the positions whose logits exist at once."""
    return logit_positions_at_once(plan, workload) * shape.vocab_size * 4


def chunking_applies(plan: Plan, workload: Workload) -> bool:
    return plan.chunked_loss and supervised_positions(plan, workload) > LOSS_CHUNK_TOKENS


@dataclass(frozen=True)
class _Dtypes:
    """Bytes per element of the tensors of a decoder layer under a plan."""

    residual: int  # the residual stream and norms (fp32 unless pure bf16 weights)
    matmul: int  # outputs of the base linear layers (and the MLP intermediates)
    attention: int  # sdpa inputs and output
    weights: int  # trainable weights and their gradients (full fine-tune)
    logits: int  # the LM head output
    autocast: bool
    frozen: bool  # LoRA: base weights frozen
    int8: bool
    quantized: bool  # int8 or NF4 base: bitsandbytes layers, not autocast's


def _dtypes(plan: Plan) -> _Dtypes:
    int8 = plan.quantization == "int8"
    quantized = plan.quantization is not None
    autocast = plan.autocast_dtype is not None
    residual = 2 if plan.weights_dtype == "bf16" and not quantized else 4
    # bitsandbytes' int8 and 4-bit matmuls are not autocast ops: their output keeps the input's dtype.
    matmul = residual if quantized or not autocast else 2
    return _Dtypes(
        residual=residual,
        matmul=matmul,
        attention=2 if autocast else matmul,
        weights=residual,
        logits=2 if autocast else residual,
        autocast=autocast,
        frozen=plan.lora,
        int8=int8,
        quantized=quantized,
    )


def _linear_input(dtypes: _Dtypes, fan_in: int, siblings: int, input_bytes: int) -> int:
    """Bytes per token a linear layer saves of its input for backward (`siblings` layers share it)."""
    if dtypes.int8:
        return 0  # bitsandbytes holds it outside autograd's saved tensors: see _int8_inputs_per_token
    if dtypes.frozen:
        return 0  # a frozen weight's gradient is not needed; the input's gradient needs only the weight
    if dtypes.autocast and input_bytes != 2:
        return siblings * 2 * fan_in  # each layer casts (and saves) its own 16-bit copy
    return input_bytes * fan_in


def _layer_bytes_per_token(shape: ModelShape, plan: Plan, workload: Workload) -> int:
    """Bytes autograd keeps per token in one decoder layer when nothing is checkpointed."""
    d = _dtypes(plan)
    hidden, intermediate = shape.hidden_size, shape.intermediate_size
    attention, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    # RMSNorm: the fp32 input (for pow/mean) and, when its weight trains, the normalised input.
    norm = 4 * hidden + (0 if d.frozen else d.residual * hidden)
    qkv_inputs = _linear_input(d, hidden, 3, d.residual)
    # sdpa keeps q, k, v and its output. With a padding mask transformers repeats K/V to all heads.
    kv_width = attention if workload.padded else kv
    sdpa = d.attention * (2 * attention + 2 * kv_width)
    o_input = _linear_input(d, attention, 1, d.attention)
    gate_up_inputs = _linear_input(d, hidden, 2, d.residual)
    # SiLU keeps its input; the product keeps both factors; down_proj its input.
    mlp = 3 * d.matmul * intermediate + _linear_input(d, intermediate, 1, d.matmul)
    lora = 0
    if plan.lora:
        # peft per adapter: a dropout mask (1 byte) and the adapter input (fp32, or its autocast copy).
        per_input = (1 if workload.lora_dropout else 0) + (2 if d.autocast else 4)
        lora = sum(
            per_input * fan_in for name, (fan_in, _) in shape.projections().items() if name in workload.lora_targets
        )
    return 2 * norm + qkv_inputs + sdpa + o_input + gate_up_inputs + mlp + lora


def _int8_inputs_per_token(shape: ModelShape, plan: Plan) -> int:
    """Bytes per token and layer that bitsandbytes' int8 matmul keeps of its inputs (q/k/v share one,
    gate/up another). It stores them on the autograd node (`ctx.tensors`), not with save_for_backward,
    so checkpointing does not drop them and backward does not free them: they live as long as the
    graph, which the trainer holds (through `loss`) until the optimizer step has run."""
    if plan.quantization != "int8":
        return 0
    d = _dtypes(plan)
    attention = shape.num_heads * shape.head_dim
    return 2 * d.residual * shape.hidden_size + d.attention * attention + d.matmul * shape.intermediate_size


def _backward_workspace_per_token(shape: ModelShape, plan: Plan) -> int:
    """Gradients in flight inside one layer's backward: two intermediate-sized and two hidden-sized."""
    d = _dtypes(plan)
    return 2 * d.matmul * shape.intermediate_size + 2 * d.residual * shape.hidden_size


def _optimizer_states(shape: ModelShape, plan: Plan, workload: Workload) -> tuple[int, int, int]:
    """(bytes in PyTorch's allocator, bytes in managed memory, workspace during the step)."""
    if plan.lora:
        return _states(shape, plan.optimizer, 4, (workload.lora_rank, tuple(workload.lora_targets)))
    return _states(shape, plan.optimizer, _dtypes(plan).weights, None)


@functools.cache
def _states(
    shape: ModelShape, optimizer: str, state_bytes: int, lora: tuple[int, tuple[str, ...]] | None
) -> tuple[int, int, int]:
    if lora is not None:
        trainable = [elements for _, elements in _lora_tensors(shape, *lora)]
    else:
        trainable = [elements for _, elements, _ in _tensors(shape)]
    if optimizer == "adamw":
        moments = 2 * state_bytes * sum(trainable)
        # The foreach step builds one moment-sized temporary (sqrt of the second moment).
        return moments, 0, state_bytes * sum(trainable)
    allocated = pageable = 0
    for elements in trainable:
        if elements < EIGHT_BIT_MIN_ELEMENTS:
            allocated += 2 * 4 * elements
            continue
        allocated += 2 * 4 * math.ceil(elements / EIGHT_BIT_BLOCK)
        if optimizer == "paged_adamw_8bit" and elements >= PAGED_MIN_ELEMENTS:
            pageable += 2 * elements
        else:
            allocated += 2 * elements
    return allocated, pageable, 0


def nf4_bytes(elements: int) -> int:
    """Bytes of one weight tensor of `elements` in bitsandbytes' NF4 with double quantization: the packed codes (two
    per byte), an 8-bit absmax per NF4_BLOCK, an fp32 absmax per NF4_NESTED_BLOCK absmaxes, and the constants."""
    blocks = math.ceil(elements / NF4_BLOCK)
    return math.ceil(elements / 2) + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCK) + NF4_TENSOR_CONSTANTS


def weights_bytes(shape: ModelShape, plan: Plan) -> int:
    """The model's own weights on the device (adapters not included)."""
    unquantized = 4 * (shape.parameters - shape.linear_parameters)
    if plan.quantization == "int8":
        rows = shape.num_layers * sum(fan_out for _, fan_out in shape.projections().values())
        return shape.linear_parameters + 4 * rows + unquantized
    if plan.quantization == "nf4":
        per_layer = sum(nf4_bytes(fan_in * fan_out) for fan_in, fan_out in shape.projections().values())
        return shape.num_layers * per_layer + unquantized
    return _dtypes(plan).weights * shape.parameters


def dequantized_weight_bytes(shape: ModelShape, plan: Plan) -> int:
    """An NF4 layer's backward dequantizes its weight to the dtype it was loaded in (fp32) and casts that to the
    gradient's 16-bit dtype: both copies of the largest projection at once (0 without an NF4 base)."""
    if plan.quantization != "nf4":
        return 0
    largest = max(fan_in * fan_out for fan_in, fan_out in shape.projections().values())
    return (4 + 2) * largest


def checkpointed_layers(plan: Plan, shape: ModelShape) -> int:
    """Decoder layers whose activations are recomputed in backward: all, none, or the plan's checkpoint_layers."""
    if not plan.gradient_checkpointing:
        return 0
    return shape.num_layers if plan.checkpoint_layers is None else min(plan.checkpoint_layers, shape.num_layers)


def estimate(shape: ModelShape, plan: Plan, workload: Workload) -> Estimate:
    """Predicted peak memory of one training step under `plan`, per phase. A plan that checkpoints fewer layers
    for shorter micro-batches (Plan.checkpoint_layers_by_tokens) peaks at whichever size its table lets take the
    most memory, often not the longest: the estimate is the largest of the longest micro-batch's and of each
    entry's (the entry's size with its layers checkpointed), so that a run's measured peak compares with it."""
    if not plan.checkpoint_layers_by_tokens:
        return _estimate_one(shape, plan, workload)
    sizes = [plan.micro_batch_size * workload.sequence_length] + [
        tokens for tokens, _ in plan.checkpoint_layers_by_tokens
    ]
    estimates = [estimate_at_tokens(shape, plan, workload, tokens) for tokens in sizes]
    return dataclasses.replace(max(estimates, key=lambda found: found.allocated), plan=plan)


def estimate_at_tokens(shape: ModelShape, plan: Plan, workload: Workload, tokens: int) -> Estimate:
    """`estimate` of a micro-batch of `tokens` computed tokens, with the layers the plan checkpoints at that size
    (Plan.checkpointed_for), as one plan without a table by size."""
    layers = plan.checkpointed_for(tokens, shape.num_layers)
    single = plan.replace(checkpoint_layers=layers, checkpoint_layers_by_tokens=())
    sized = dataclasses.replace(workload, sequence_length=-(-tokens // plan.micro_batch_size))
    return dataclasses.replace(_estimate_one(shape, single, sized), plan=plan)


def _estimate_one(shape: ModelShape, plan: Plan, workload: Workload) -> Estimate:
    """`estimate` of one micro-batch size: `plan.checkpoint_layers` layers checkpointed."""
    d = _dtypes(plan)
    tokens = plan.micro_batch_size * workload.sequence_length
    hidden, vocab = shape.hidden_size, shape.vocab_size
    adapters = 4 * shape.lora_parameters(workload.lora_rank, workload.lora_targets) if plan.lora else 0
    weights = weights_bytes(shape, plan)
    gradients = adapters if plan.lora else d.weights * shape.parameters
    states, pageable, optimizer_workspace = _optimizer_states(shape, plan, workload)
    ddp_buckets = plan.world_size > 1 and plan.parallel == "ddp"
    gradients_in_forward = gradients if plan.grad_accumulation > 1 or ddp_buckets else 0

    per_layer = tokens * _layer_bytes_per_token(shape, plan, workload)
    int8_inputs = tokens * _int8_inputs_per_token(shape, plan)
    int8_held = shape.num_layers * int8_inputs
    # The previous micro-batch's graph is released only when the next forward returns its loss.
    int8_held_in_forward = int8_held * (2 if plan.grad_accumulation > 1 else 1)
    checkpoint_inputs = tokens * d.residual * hidden
    checkpointed = checkpointed_layers(plan, shape)
    kept_layers = shape.num_layers - checkpointed  # selective checkpointing: these keep their activations
    layers_saved = checkpointed * checkpoint_inputs + kept_layers * per_layer
    positions = supervised_positions(plan, workload)
    # The final norm's fp32 input and normalised output, the LM head's input, the padding mask.
    outside = tokens * (4 + (0 if d.frozen else d.residual)) * hidden
    outside += positions * _linear_input(d, hidden, 1, d.residual)
    mask = 0
    if workload.batching == "packed":  # one row of the micro-batch's samples: a block-diagonal [row x row] mask
        mask = tokens**2
    elif workload.padded:
        mask = plan.micro_batch_size * workload.sequence_length**2
    activations = layers_saved + outside + mask

    # Autocast copies of fp32 weights: cached (trainable) or saved by each linear (frozen) until
    # backward; with checkpointing a frozen layer's copies live only while that layer runs.
    head_copy = 2 * shape.head_parameters if d.autocast and d.weights == 4 else 0
    layer_copies = 2 * shape.linear_parameters if d.autocast and d.weights == 4 and not d.quantized else 0
    one_layer_copies = layer_copies // shape.num_layers
    forward_copies = head_copy + (
        one_layer_copies if plan.lora and plan.gradient_checkpointing and not kept_layers else layer_copies
    )
    loss_backward_copies = head_copy + kept_layers * one_layer_copies

    fp32_logits = fp32_logits_bytes(shape, plan, workload)
    keeps_head_output = workload.logits_tokens == "all" and not plan.chunked_loss
    head_output = d.logits * positions * vocab if keeps_head_output and d.logits != 4 else 0
    logits_forward = 2 * fp32_logits + head_output  # head output (or its fp32 upcast) + log-softmax
    logits_backward = 3 * fp32_logits + head_output  # log-softmax output + its gradient + the logits' gradient
    head_gradient = 0
    if not plan.lora:
        head_gradient = 0 if gradients_in_forward else d.weights * shape.head_parameters
        head_gradient += 2 * shape.head_parameters if d.autocast and d.weights == 4 else 0  # 16-bit copy's gradient

    static = {"weights": weights, "adapters": adapters, "optimizer_states": states}
    held = {"int8_layer_inputs": int8_held} if int8_held else {}
    loss_backward = {
        **static,
        **held,
        "gradients": gradients_in_forward + head_gradient,
        "autocast_weight_copies": loss_backward_copies,
        "activations": activations,
        "logits": logits_backward,
    }
    recompute = checkpoint_inputs if plan.gradient_checkpointing else 0
    first_layer_backward = {  # every gradient exists; layer 0 is recomputed (or its saved tensors are left)
        **static,
        **held,
        "gradients": gradients,
        "autocast_weight_copies": one_layer_copies,
        "activations": recompute + per_layer + (int8_inputs if plan.gradient_checkpointing else 0) + mask,
        "backward_workspace": tokens * _backward_workspace_per_token(shape, plan),
        **({"dequantized_weight": dequantized_weight_bytes(shape, plan)} if plan.quantization == "nf4" else {}),
    }
    # A tied embedding's dense gradient is built, then summed into the gradient lm_head already made.
    tied_gradient = d.weights * shape.head_parameters if shape.tie_word_embeddings and not plan.lora else 0
    embedding_backward = {**static, **held, "gradients": gradients, "embedding_gradient": tied_gradient}
    moments = (loss_backward, first_layer_backward, embedding_backward)
    backward = max(moments, key=lambda components: sum(components.values()))
    phases = {
        "load": PhaseEstimate("load", {"weights": weights, "adapters": adapters}),
        "forward": PhaseEstimate(
            "forward",
            {
                **static,
                **({"int8_layer_inputs": int8_held_in_forward} if int8_held else {}),
                "gradients": gradients_in_forward,
                "autocast_weight_copies": forward_copies,
                "activations": activations,
                "logits": logits_forward,
            },
        ),
        "backward": PhaseEstimate("backward", backward),
        "optimizer": PhaseEstimate(
            "optimizer",
            {
                **static,
                **held,
                "gradients": gradients,
                "optimizer_workspace": optimizer_workspace,
            },
        ),
    }
    if plan.world_size > 1 and plan.parallel == "fsdp":
        phases = _sharded(phases, shape, plan)
    expandable = "expandable_segments" in " ".join(plan.env.values())
    return Estimate(
        plan=plan,
        phases=phases,
        fragmentation=FRAGMENTATION_EXPANDABLE if expandable else FRAGMENTATION,
        pageable=pageable,
    )


def _sharded(phases: dict[str, PhaseEstimate], shape: ModelShape, plan: Plan) -> dict[str, PhaseEstimate]:
    """The phases of one FSDP rank: model state divided by the world size, plus what is gathered whole
    (the root's parameters and two decoder layers), and one layer's gradients before its reduce-scatter."""
    world = plan.world_size
    element = _dtypes(plan).weights
    root = shape.head_parameters * (1 if shape.tie_word_embeddings else 2) + shape.hidden_size
    layer = (shape.parameters - root) // shape.num_layers
    gathered = element * (root + 2 * layer)
    out = {"load": phases["load"]}
    for name in ("forward", "backward", "optimizer"):
        components = dict(phases[name].components)
        components["weights"] = components["weights"] // world + (gathered if name != "optimizer" else 0)
        for part in ("optimizer_states", "optimizer_workspace"):
            if part in components:
                components[part] //= world
        if components.get("gradients"):
            unsharded = element * layer if name == "backward" else 0
            components["gradients"] = components["gradients"] // world + unsharded
        out[name] = PhaseEstimate(name, components)
    return out
