"""`tamer eval` for the chat, instruct and text recipes, in the result child (tamer/engine/result.py).

    prepared = prepare(config)                               # or prepare_file(config, "other.jsonl")
    validation_loss(model, prepared.evaluation, pad_id, config, device)
    em_f1(model, tokenizer, config, prepared, device, limit, batch_size)   # chat and instruct only

The validation loss is the training loss (the sum over scored tokens divided by their number) over the
validation examples, batched as training batches them. EM and F1 (SQuAD's scorer, tamer/recipes/squad_score.py)
score greedy replies: for chat, the model is asked the conversation up to its last assistant turn (rendered
with the generation prompt) and its reply is cut at the template's end-of-turn text; for instruct, it is asked
the rendered prompt. The references are a row's `answers`, else that last turn or the completion.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from tamer.engine import batching
from tamer.engine.generate import generate_answers
from tamer.engine.loss import loss_sum
from tamer.engine.model import cudnn_attention_allowed, use_cudnn_attention
from tamer.recipes import chat, instruct
from tamer.recipes.squad_score import prediction_rows, score

PROBE = "\u2063REPLY\u2063"
"""A reply no real conversation holds: rendering it shows what the template writes after a reply."""


@torch.no_grad()
def validation_loss(
    model: Any, examples: list[Any], pad_id: int, config: Any, device: torch.device, batch_size: int | None = None
) -> dict[str, Any]:
    """Mean loss per scored token over `examples`, and how many tokens and examples that was."""
    started = time.perf_counter()
    size = batch_size or config.eval_batch_size
    total, count = 0.0, 0
    ids = list(range(len(examples)))
    for start in range(0, len(ids), size):
        for micro in batching.build(
            examples,
            ids[start : start + size],
            size,
            config.batching_mode,
            pad_id,
            config.max_seq_len,
            config.batch_multiple,
        ):
            summed, tokens = loss_sum(model, {name: value.to(device) for name, value in micro.tensors.items()})
            total += float(summed)
            count += tokens
    return {
        "eval_loss": total / max(1, count),
        "eval_tokens": count,
        "eval_samples": len(examples),
        "seconds": time.perf_counter() - started,
    }


def end_of_turn(template: Any) -> str:
    """What the chat template writes right after a reply (`<|im_end|>` for ChatML), trailing whitespace dropped."""
    text = template.render([{"role": "user", "content": "?"}, {"role": "assistant", "content": PROBE}])
    return text[text.index(PROBE) + len(PROBE) :].strip() if PROBE in text else ""


def prompts_and_references(
    prepared: Any, config: Any, limit: int
) -> tuple[list[list[int]], list[list[str]], list[str]]:
    """Token ids of the first `limit` validation records' prompts (those longer than max_seq_len left out, as
    training leaves them), each one's references, and each one's id."""
    tokenizer, prompts, references, record_ids = prepared.tokenizer, [], [], []
    for record in prepared.eval_records:
        if len(prompts) == limit:
            break
        if config.recipe == "chat":
            messages = chat.generation_prompt(record)
            if messages is None or not record.answers:
                continue
            tokens = tokenizer.ids(prepared.template.render(messages, add_generation_prompt=True))
        else:
            tokens = instruct.prompt_ids(record, tokenizer, config.prompt_template)
        if len(tokens) < config.max_seq_len:
            prompts.append(tokens)
            references.append(list(record.answers))
            record_ids.append(record.id)
    return prompts, references, record_ids


def em_f1(
    model: Any,
    tokenizer: Any,
    config: Any,
    prepared: Any,
    device: torch.device,
    limit: int | None,
    batch_size: int | None,
) -> dict[str, Any]:
    """EM and F1 of greedy replies to the validation records (chat, instruct), as tamer/engine/result.py's
    `evaluate` reports SQuAD's."""
    started = time.perf_counter()
    prompts, references, record_ids = prompts_and_references(
        prepared, config, limit if limit is not None else config.eval.squad_samples
    )
    stop = end_of_turn(prepared.template) if prepared.template is not None else ""
    stop_ids = (
        prepared.tokenizer.ids(stop) if stop else []
    )  # one token (<|eot_id|>, <|im_end|>): decoding stops there too
    with cudnn_attention_allowed(device, use_cudnn_attention(config.cudnn_attention, "generate")):
        answers, batch_size = generate_answers(
            model,
            tokenizer,
            prompts,
            batch_size or config.eval.squad_batch_size,
            config.eval.squad_max_new_tokens,
            device,
            stop_ids[0] if len(stop_ids) == 1 else None,
        )
    if stop:
        answers = [answer.split(stop)[0].strip() for answer in answers]
    result = score(answers, references)
    seconds = time.perf_counter() - started
    return {
        **result,
        "seconds": seconds,
        "batch_size": batch_size,
        "questions_per_second": result["questions"] / seconds if seconds else None,
        "peak_allocated": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "examples": [{"answer": answer, "gold": gold} for answer, gold in zip(answers[:5], references[:5])],
        "predictions": prediction_rows(record_ids, answers, references),
    }
