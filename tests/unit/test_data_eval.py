"""EM/F1 of chat and instruct replies (tamer/engine/data_eval.py): what the model is asked, where its reply is cut,
what it is scored against; and the validation loss over examples."""

from __future__ import annotations

import json

import torch

from tamer.config import build_config
from tamer.engine import data_eval
from tamer.recipes.chat_templates import CHATML, ChatTemplate
from tamer.recipes.prepare import prepare_file


def test_chatml_replies_end_at_im_end():
    """The end-of-turn text is what the template writes after a reply, without the newline."""
    assert data_eval.end_of_turn(ChatTemplate(CHATML, "chatml")) == "<|im_end|>"


def test_a_chat_model_is_asked_the_conversation_up_to_its_last_reply(tmp_path):
    """The prompt is every message before the last assistant turn plus the generation prompt; the references are the
    row's answers, else that last reply; a row without a reply is not asked (train_on: all keeps it for training)."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ]
        },
        {
            "messages": [{"role": "user", "content": "Largest planet?"}, {"role": "assistant", "content": "Jupiter"}],
            "answers": ["Jupiter", "jupiter"],
        },
        {"messages": [{"role": "user", "content": "Just a note."}]},
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = build_config("tiny", options={"recipe": "chat"}, sets=["train_on=all"])
    prepared = prepare_file(config, str(path))
    prompts, references, ids = data_eval.prompts_and_references(prepared, config, limit=10)
    expected = ChatTemplate(CHATML, "chatml").render(rows[0]["messages"][:3], add_generation_prompt=True)
    assert prepared.tokenizer.backend.decode(prompts[0]) == expected
    assert expected.endswith("<|im_start|>assistant\n") and references == [["Paris"], ["Jupiter", "jupiter"]]
    assert ids == ["row 0", "row 1"]  # rows without an `id` are named by position, as in errors
    assert data_eval.prompts_and_references(prepared, config, limit=1)[1] == [["Paris"]]


def test_the_validation_loss_is_the_mean_over_scored_tokens(tmp_path):
    """validation_loss sums token losses over every batch and divides by the scored tokens, whatever the batch size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path / "eval.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Question {n}?", "completion": f"Answer {n}"}) + "\n" for n in range(5))
    )
    config = build_config("tiny", options={"recipe": "instruct"})
    prepared = prepare_file(config, str(path))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config.architecture)).eval()
    whole = data_eval.validation_loss(model, prepared.evaluation, 2, config, torch.device("cpu"), batch_size=5)
    split = data_eval.validation_loss(model, prepared.evaluation, 2, config, torch.device("cpu"), batch_size=2)
    scored = sum(sum(1 for label in example.labels[1:] if label != -100) for example in prepared.evaluation)
    assert (
        whole["eval_tokens"] == split["eval_tokens"] == scored and abs(whole["eval_loss"] - split["eval_loss"]) < 1e-5
    )
    assert 9 < whole["eval_loss"] < 12  # a random 32k-vocabulary model: about ln(32000) = 10.4


def test_decoding_also_stops_at_the_end_of_turn_token():
    """With an end-of-turn token, generation is told to stop there too and the reply is cut before it; without one
    (SQuAD) only end-of-sequence stops it."""
    from tamer.engine.generate import generate_answers
    from tamer.recipes.squad import load_tokenizer

    tokenizer = load_tokenizer("bundled", "tiny")
    paris, turn_end = tokenizer("Paris", add_special_tokens=False)["input_ids"], 28705
    seen = []

    class Fixed:
        def generate(self, input_ids, attention_mask, generation_config):
            seen.append(generation_config.eos_token_id)
            new = torch.tensor([paris + [turn_end] + paris] * len(input_ids))
            return torch.cat([input_ids, new], dim=1)

    answers, _ = generate_answers(Fixed(), tokenizer, [[1, 5, 6]], 4, 8, torch.device("cpu"), also_stop_at=turn_end)
    assert answers == ["Paris"] and seen[-1] == [tokenizer.eos_token_id, turn_end]
    answers, _ = generate_answers(Fixed(), tokenizer, [[1, 5, 6]], 4, 8, torch.device("cpu"))
    assert answers[0].startswith("Paris") and answers[0] != "Paris" and seen[-1] == tokenizer.eos_token_id
