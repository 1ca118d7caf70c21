"""The chat recipe (tamer/recipes/chat.py, chat_templates.py): which tokens the loss scores under a known
template, ShareGPT rows, the rows it skips and counts, the rows it refuses, and rendering as transformers does."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from tamer.errors import ConfigError, DataError, ModelError
from tamer.recipes import chat, tokens
from tamer.recipes.chat_templates import CHATML, ChatTemplate, resolve
from tamer.recipes.examples import IGNORE_INDEX
from tamer.recipes.sources import Rows

CONVERSATION = [
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "see you"},
]
# ChatML renders CONVERSATION as "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n...", which
# the word tokenizer below cuts into one token per marker and per word (whitespace is dropped):
#   0 <|im_start|>  1 user  2 hi  3 there  4 <|im_end|>  5 <|im_start|>  6 assistant  7 hello  8 <|im_end|>
#   9 <|im_start|> 10 user 11 bye 12 <|im_end|> 13 <|im_start|> 14 assistant 15 see 16 you 17 <|im_end|>
ASSISTANT_POSITIONS = [7, 8, 15, 16, 17]  # both replies and their end-of-turn markers; never a role name or a user word
LAST_ASSISTANT_POSITIONS = [15, 16, 17]


def word_tokenizer() -> tokens.TextTokenizer:
    """A tokenizer with one token per word and per ChatML marker, so positions can be counted by hand."""
    words = ["<unk>", "user", "assistant", "system", "hi", "there", "hello", "bye", "see", "you"]
    backend = Tokenizer(WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return tokens.TextTokenizer(backend, "a word tokenizer", {"eos_token": "<|im_end|>"})


def rows(*conversations, column: str = "messages") -> Rows:
    return Rows([{column: conversation} for conversation in conversations], [column], "data test.jsonl")


def examples(conversations: Rows, train_on: str = "assistant", max_seq_len: int = 512, overlong: str = "truncate"):
    found = chat.conversations_of(conversations, None, train_on)
    kept = [record for record in found if not isinstance(record, str)]
    built, counts = chat.build_examples(
        kept, word_tokenizer(), ChatTemplate(CHATML, "chatml"), max_seq_len, train_on, overlong, "data t"
    )
    return found, built, counts


def scored(example) -> list[int]:
    return [position for position, label in enumerate(example.labels) if label != IGNORE_INDEX]


@pytest.mark.parametrize(
    ("train_on", "positions"),
    [("assistant", ASSISTANT_POSITIONS), ("last_assistant", LAST_ASSISTANT_POSITIONS), ("all", list(range(1, 18)))],
)
def test_the_loss_scores_the_named_positions_under_chatml(train_on, positions):
    """Under ChatML the loss scores each reply and its <|im_end|> (assistant), the last one (last_assistant), or every
    token but the first (all); scored labels are the tokens themselves."""
    _, (example,), _ = examples(rows(CONVERSATION), train_on)
    assert scored(example) == positions
    assert all(example.labels[position] == example.input_ids[position] for position in positions)


def test_sharegpt_rows_train_exactly_as_messages_rows():
    """`conversations` of {from: human/gpt, value} give the same ids and labels as the messages rows they translate."""
    sharegpt = [{"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in CONVERSATION]
    _, (from_messages,), _ = examples(rows(CONVERSATION))
    _, (from_sharegpt,), _ = examples(rows(sharegpt, column="conversations"))
    assert (from_sharegpt.input_ids, from_sharegpt.labels) == (from_messages.input_ids, from_messages.labels)


def test_rows_without_a_reply_or_with_an_empty_message_are_skipped_and_counted():
    """A conversation with no assistant turn is skipped (kept under train_on: all); one with an empty message is skipped."""
    no_reply = [{"role": "user", "content": "hi"}]
    empty = [{"role": "user", "content": "  "}, {"role": "assistant", "content": "hello"}]
    found, built, _ = examples(rows(CONVERSATION, no_reply, empty))
    assert found[1:] == ["no_assistant", "empty"] and len(built) == 1
    found, built, _ = examples(rows(CONVERSATION, no_reply), train_on="all")
    assert len(built) == 2


def test_overlong_conversations_are_truncated_skipped_or_refused():
    """Over max_seq_len (here 10 of 18 tokens): truncate keeps the first 10 (the first reply stays scored), skip drops
    the row, error refuses it naming max_seq_len; each counted."""
    _, (example,), counts = examples(rows(CONVERSATION), max_seq_len=10)
    assert len(example.input_ids) == 10 and example.truncated and scored(example) == [7, 8] and counts["truncated"] == 1
    _, built, counts = examples(rows(CONVERSATION), max_seq_len=10, overlong="skip")
    assert built == [] and counts["skipped_too_long"] == 1
    with pytest.raises(DataError, match=r"^data t: row 0 has 18 tokens, more than max_seq_len 10 \(overlong: error\)"):
        examples(rows(CONVERSATION), max_seq_len=10, overlong="error")
    _, built, counts = examples(rows(CONVERSATION), max_seq_len=5)  # both replies cut away: nothing left to learn
    assert built == [] and counts["skipped_too_long"] == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            [{"role": "asistant", "content": "x"}],
            r"row 0: message 0 has unknown role 'asistant'; known roles: system, user, "
            r"assistant, tool; did you mean 'assistant'\?",
        ),
        ([{"from": "bot", "value": "x"}], r"message 0 has unknown role 'bot'; known roles: system, human, user, gpt"),
        ([{"role": "user", "content": ["a", "list"]}], r"message 0 content is list, expected text"),
        ("hello", r"row 0: the conversation is str, expected a list of messages"),
    ],
)
def test_malformed_rows_are_refused_naming_the_row(bad, message):
    """An unknown role (with the known ones and the closest), content that is not text, a conversation that is not a list."""
    with pytest.raises(DataError, match=message):
        chat.conversations_of(rows(bad), None, "assistant")


def test_a_file_mixing_messages_and_sharegpt_rows_is_refused():
    """Rows of both shapes in one source: a one-line error naming a row of each."""
    mixed = Rows(
        [
            {"messages": CONVERSATION, "conversations": None},
            {"messages": None, "conversations": [{"from": "human", "value": "x"}]},
        ],
        ["messages", "conversations"],
        "data mixed.jsonl",
    )
    with pytest.raises(
        DataError, match=r"row 0 is a messages row and row 1 a ShareGPT conversations row: a file mixing formats"
    ):
        chat.conversations_of(mixed, None, "assistant")


def test_no_conversation_column_names_the_columns_and_the_near_miss():
    """Without messages/conversations columns the error lists the columns and the one that nearly spells one."""
    with pytest.raises(
        DataError,
        match=r"no 'messages' or 'conversations' column \(columns: mesages, id\); column 'mesages' looks like "
        r"'messages'; name yours with columns: \{messages: COLUMN\}",
    ):
        chat.conversations_of(
            Rows([{"mesages": CONVERSATION, "id": 1}], ["mesages", "id"], "data x"), None, "assistant"
        )


def test_a_tokenizer_without_a_chat_template_is_an_error_naming_the_key():
    """No chat_template set and none in the tokenizer: a ModelError that names the config key and the built-ins."""
    with pytest.raises(
        ModelError,
        match=r"a word tokenizer has no chat template; set one with `chat_template: FILE \| NAME` "
        r"\(e.g. --set chat_template=chatml; built in: chatml\)",
    ):
        resolve(None, word_tokenizer())
    with pytest.raises(ConfigError, match="neither a file nor a built-in template"):
        resolve("no-such-template.jinja", word_tokenizer())


def test_a_template_that_rewrites_earlier_turns_is_refused():
    """A template whose render of a prefix is not a prefix of the whole (it numbers turns from the end) cannot be cut."""
    reversed_numbers = "{% for m in messages %}{{ messages|length - loop.index }}:{{ m['content'] }} {% endfor %}"
    template = ChatTemplate(reversed_numbers, "test.jinja")
    with pytest.raises(ConfigError, match=r"chat template \(test.jinja\): it renders the first 1 messages differently"):
        template.assistant_spans(CONVERSATION)


LLAMA2_LIKE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("template", [CHATML, LLAMA2_LIKE])
def test_rendering_matches_transformers_apply_chat_template(template):
    """The torch-free renderer gives apply_chat_template's text, with and without the generation prompt, special tokens included."""
    from tamer.recipes.squad import load_tokenizer

    reference = load_tokenizer("bundled", "tiny")
    reference.chat_template = template
    ours = resolve(None, tokens.TextTokenizer(None, "bundled", {"bos_token": "<s>", "eos_token": "</s>"}, template))
    for messages, prompt in ((CONVERSATION, False), (CONVERSATION[:3], True)):
        assert ours.render(messages, add_generation_prompt=prompt) == reference.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt
        )


def test_a_template_that_raises_is_a_data_error_naming_the_row():
    """raise_exception in the template (two user turns in a row) becomes a DataError with the row and the template's words."""
    template = ChatTemplate(LLAMA2_LIKE, "llama2.jinja", (("bos_token", "<s>"), ("eos_token", "</s>")))
    twice = [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "there"},
        {"role": "assistant", "content": "hello"},
    ]
    conversation = chat.conversations_of(rows(twice), None, "assistant")
    with pytest.raises(
        DataError, match=r"^data t: row 0: the chat template refused it \(Conversation roles must alternate"
    ):
        chat.build_examples(conversation, word_tokenizer(), template, 512, "assistant", "truncate", "data t")
