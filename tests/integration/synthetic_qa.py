"""A synthetic SQuAD v1.1 file a tiny model learns in a hundred or so CPU steps: each context is one
word said five times, and the answer is that word (a copy from the context).

The repetition makes the task learnable by the tiny preset's 2-layer, 64-wide model in few steps
whatever its seed: attention spread evenly over the context already carries the answer, so the model
only has to learn to read it out. (A single copy from one position among other words plateaus at the
answers' prior for hundreds of steps, and only on some seeds.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

# Each is one token of the bundled tokenizer after a space, so every prompt has the same length.
WORDS = (
    "apple river stone cloud green music table horse paper light night bread chair water glass house "
    "smile train plant dream ocean honey queen sugar metal forest garden silver winter"
).split()
QUESTION = "Which word is said?"


def write_copy_task(path: Path, questions: int, seed: int = 0) -> Path:
    """Write `questions` say-the-word questions as an official-layout SQuAD v1.1 JSON file."""
    rng = random.Random(seed)
    paragraphs = []
    for index in range(questions):
        answer = rng.choice(WORDS)
        context = " ".join([answer] * 5)
        paragraphs.append(
            {
                "context": context,
                "qas": [
                    {"id": f"copy-{index}", "question": QUESTION, "answers": [{"text": answer, "answer_start": 0}]}
                ],
            }
        )
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "copy", "paragraphs": paragraphs}]}))
    return path
