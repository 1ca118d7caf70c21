"""Greedy decoding of answers for the SQuAD and EM/F1 passes (tamer/engine/result.py, tamer/engine/data_eval.py):
left-padded batches with a KV cache, longest prompts first, the batch halved on an OOM."""

from __future__ import annotations

from typing import Any

import torch


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
    also_stop_at: int | None = None,
) -> tuple[list[str], int]:
    """Greedy answers to `prompts` (in their order) and the batch size that fitted. Longest prompts
    go first, so an OOM comes early; it halves the batch for the rest of the pass. Decoding stops at
    end-of-sequence, and at `also_stop_at` (a chat template's end-of-turn token) when given."""
    from transformers import GenerationConfig

    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    stops = eos_id if also_stop_at in (None, eos_id) else [eos_id, also_stop_at]
    settings = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=stops,
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    answers: list[str] = [""] * len(prompts)
    position = 0
    while position < len(order):
        chunk = order[position : position + batch_size]
        try:
            generated = _generate_batch(model, [prompts[index] for index in chunk], pad_id, settings, device)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        for index, tokens in zip(chunk, generated):
            ends = [position for position, token in enumerate(tokens) if token in (eos_id, also_stop_at)]
            if ends:
                tokens = tokens[: ends[0]]
            answers[index] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        position += len(chunk)
    return answers, batch_size


@torch.no_grad()
def _generate_batch(
    model: Any, prompts: list[list[int]], pad_id: int, settings: Any, device: torch.device
) -> list[list[int]]:
    """Left-padded so every prompt ends where generation starts; positions come from the attention mask."""
    longest = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, longest - len(prompt) :] = 1
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=settings
    )
    return output[:, longest:].tolist()
