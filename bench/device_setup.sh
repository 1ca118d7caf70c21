# Source this on the lent GPU machine, from the repository root: `. bench/device_setup.sh`.
# Installs the carried wheels (.whl/: bitsandbytes, structlog, sqlite-utils and its deps, typer, rich,
# shellingham, xxhash, pydantic + pydantic-core + annotated-types + typing-inspection)
# once per machine, puts tamer on PYTHONPATH, and builds the Llama-3.2-1B-shaped random model at
# /tmp/llama1b once per machine (bench/make_random_model.py; loaded with from_pretrained like a real one).
if [ ! -d /tmp/site ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
fi
export PYTHONPATH=/tmp/site:$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
[ -f /tmp/llama1b/config.json ] || python3 bench/make_random_model.py /tmp/llama1b || return 1
