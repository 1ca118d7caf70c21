"""A synthetic SQuAD v1.1 file a tiny model learns in a few hundred CPU steps: each context is five
words, the first three the same word, and the answer is that word (a copy from fixed positions).

Repeating the word makes the task learnable by a 2-layer, 64-wide model in ~100 steps: attention
spread evenly over the context already carries mostly the answer, so the model only has to learn to
read it out (a single copy from one position plateaus at chance for hundreds of steps)."""

from __future__ import annotations

import json
import random
from pathlib import Path

# Each is one token of the bundled tokenizer after a space, so every prompt has the same length.
WORDS = ("apple river stone cloud green music table horse paper light night bread chair water glass house "
         "smile train plant dream ocean honey queen sugar metal forest garden silver winter").split()
ANSWERS = WORDS[:8]  # few distinct answers: each is seen often in a short run
QUESTION = "Which word comes first?"


def write_copy_task(path: Path, questions: int, seed: int = 0) -> Path:
    """Write `questions` copy-the-first-word questions as an official-layout SQuAD v1.1 JSON file."""
    rng = random.Random(seed)
    paragraphs = []
    for index in range(questions):
        answer = rng.choice(ANSWERS)
        fillers = rng.sample([word for word in WORDS if word != answer], 2)
        context = " ".join([answer] * 3 + fillers)
        paragraphs.append({"context": context, "qas": [{"id": f"copy-{index}", "question": QUESTION,
                                                        "answers": [{"text": answer, "answer_start": 0}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "copy", "paragraphs": paragraphs}]}))
    return path
