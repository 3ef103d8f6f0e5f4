#!/usr/bin/env bash
# GPU check for one H100/H200, no network, about 3-5 minutes:
#   1. the engine checks on cuda + bfloat16 (tests/test_engine_device.py) and the fast-solver tests;
#   2. `os-sample bench --compare` on random-weight models shaped like Qwen2.5-1.5B (theta) and
#      Qwen2.5-3B (teacher), built from their published config dimensions (no weights downloaded);
#   3. compiled fixed-slot decoding (models.compile): its test on $DEVICE (CUDA graphs, float32, same
#      tokens as eager), then eager vs compiled tokens/s on the same pair (benchmarks/bench_compile.py).
#      COMPILE=0 skips step 3 (compiling the two models takes a minute or two).
# Try it on a CPU with tiny shapes:  DEVICE=cpu DTYPE=float32 SHAPES=tiny scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
SHAPES=${SHAPES:-qwen2.5}
BATCH=${BATCH:-16}
TOKENS=${TOKENS:-64}
COMPILE=${COMPILE:-1}
WORK=${WORK:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'transformers', transformers.__version__)"

echo "== 1. engine tests on $DEVICE / $DTYPE"
OS_SAMPLE_TEST_DEVICE=$DEVICE OS_SAMPLE_TEST_DTYPE=$DTYPE \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_device.py tests/test_fastmix.py

echo "== 2. bench --compare on random $SHAPES-shaped models ($WORK)"
"$PY" scripts/make_shaped_pair.py "$WORK" --shapes "$SHAPES" --device "$DEVICE" --dtype "$DTYPE" \
  --max-new-tokens "$TOKENS"
COLUMNS=80 "$PY" -m os_cli bench --config "$WORK/bench.yaml" --batch-sizes "$BATCH" --prompts "$BATCH" \
  --compare --json "$WORK/bench.json"
echo "wrote $WORK/bench.json"

if [ "$COMPILE" = 1 ]; then
  echo "== 3. compiled fixed-slot decoding on $DEVICE: test, then eager vs compiled ($DTYPE)"
  OS_SAMPLE_TEST_COMPILE=1 OS_SAMPLE_TEST_DEVICE=$DEVICE \
    "$PY" -m pytest -q -s -p no:cacheprovider tests/test_compile.py -k compiled_step
  "$PY" benchmarks/bench_compile.py --config "$WORK/bench.yaml" --batch-size "$BATCH" --prompts $((2 * BATCH)) \
    --max-new-tokens "$TOKENS"
fi
