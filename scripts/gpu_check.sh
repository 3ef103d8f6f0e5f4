#!/usr/bin/env bash
# GPU check for one H100/H200, no network. By default the four throughput checks of issue 17, about 3-5
# minutes, on random-weight bf16 Qwen2-architecture models built from config (nothing downloaded), then ONE
# table (section, measurement, value as median (min-max), target):
#   1. one model with hinted teacher prompts: one stacked forward vs the same weights as two models
#      (benchmarks/bench_stacked.py), batch 1, 4, 16, 64;
#   2. prefill each prompt once with num_samples 8, 512-token prompts (benchmarks/bench_prefix.py);
#   3. busy slots: long-tail refill vs the full-batch floor, occupancy and the time split
#      (benchmarks/bench_refill.py);
#   4. draft_tokens auto vs fixed k at batch 1 and 16 (benchmarks/bench_draft_auto.py).
# A benchmark missing from this tree is reported as such; each one's full output stays in $WORK/N.log.
# FULL=1 also runs the earlier checks afterwards: the engine tests on the device, `os-sample bench --compare`
# on Qwen2.5-1.5B/3B-shaped models and compiled fixed slots (COMPILE=0 skips those).
# Try it on a CPU with tiny shapes (about 2-4 minutes on 2 busy cores):
#   DEVICE=cpu DTYPE=float32 SHAPES=tiny scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
SHAPES=${SHAPES:-qwen2.5}
WORK=${WORK:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$SHAPES" = tiny ]; then
  # sections 1-2: hidden, layers, vocab; 3: theta and teacher hidden x layers x intermediate; 4: theta, teacher layers
  ONE=(--hidden 64 --layers 2 --vocab 512); ONE_BATCHES=(1 4); ONE_TOKENS=4; PREFIX_LEN=64; PREFIX_SAMPLES=4
  REFILL=(--theta-shape 64x2x128 --teacher-shape 64x2x128 --vocab 360 --rows 12 --batch 4 --max-new-tokens 24)
  AUTO=(--theta-shape 64x1x128 --teacher-layers 3 --vocab 360 --max-new-tokens 8 --batches 1 4)
  REPEATS=1
else
  # Qwen2.5-1.5B's dimensions (hidden 1536, 28 layers, 151936 ids) for one model and for refill's teacher;
  # Qwen2.5-0.5B's (896 x 24) for refill's theta; auto: a 6-layer theta drafting for a 36-layer teacher.
  ONE=(--hidden 1536 --layers 28 --vocab 151936); ONE_BATCHES=(1 4 16 64); ONE_TOKENS=32; PREFIX_LEN=512
  PREFIX_SAMPLES=8
  REFILL=(--theta-shape 896x24x4864 --teacher-shape 1536x28x8960 --vocab 151936 --rows 64 --batch 16
          --max-new-tokens 128)
  AUTO=(--theta-shape 896x6x4864 --teacher-layers 36 --vocab 151936 --max-new-tokens 48 --batches 1 16)
  REPEATS=3
fi
DEV=(--device "$DEVICE" --dtype "$DTYPE")

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'transformers', transformers.__version__)"
mkdir -p "$WORK"
echo "logs in $WORK"

run() {  # run N SCRIPT ARGS...: the benchmark's output to $WORK/N.log (and a status line here)
  local n=$1 script=$2
  shift 2
  if [ ! -f "$script" ]; then
    echo "MISSING $script" > "$WORK/$n.log"
    echo "== $n. $script: not in this tree"
    return
  fi
  echo "== $n. $script $*"
  local start=$SECONDS
  if "$PY" "$script" "$@" > "$WORK/$n.log" 2>&1; then
    echo "   done in $((SECONDS - start)) s"
  else
    echo "   FAILED (exit $?) after $((SECONDS - start)) s; last lines:"
    tail -5 "$WORK/$n.log" | sed 's/^/   /'
  fi
}

run 1 benchmarks/bench_stacked.py "${DEV[@]}" "${ONE[@]}" --batches "${ONE_BATCHES[@]}" \
  --max-new-tokens "$ONE_TOKENS" --repeats "$REPEATS"
run 2 benchmarks/bench_prefix.py "${DEV[@]}" "${ONE[@]}" --prompt-len "$PREFIX_LEN" --samples "$PREFIX_SAMPLES" \
  --max-new-tokens "$ONE_TOKENS" --repeats "$REPEATS"
run 3 benchmarks/bench_refill.py "${DEV[@]}" "${REFILL[@]}" --variants refill --repeats "$REPEATS"
run 4 benchmarks/bench_draft_auto.py "${DEV[@]}" "${AUTO[@]}" --repeats "$REPEATS"

echo
echo "== issue 17 on $DEVICE / $DTYPE ($SHAPES shapes)"
"$PY" scripts/gpu_table.py "$WORK"

if [ "${FULL:-0}" = 1 ]; then
  BATCH=${BATCH:-16}
  TOKENS=${TOKENS:-64}
  COMPILE=${COMPILE:-1}
  echo "== engine tests on $DEVICE / $DTYPE"
  OS_SAMPLE_TEST_DEVICE=$DEVICE OS_SAMPLE_TEST_DTYPE=$DTYPE \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_device.py tests/test_fastmix.py
  echo "== bench --compare on random $SHAPES-shaped models ($WORK)"
  "$PY" scripts/make_shaped_pair.py "$WORK" --shapes "$SHAPES" --device "$DEVICE" --dtype "$DTYPE" \
    --max-new-tokens "$TOKENS"
  COLUMNS=80 "$PY" -m os_cli bench --config "$WORK/bench.yaml" --batch-sizes "$BATCH" --prompts "$BATCH" \
    --compare --json "$WORK/bench.json"
  echo "wrote $WORK/bench.json"
  if [ "$COMPILE" = 1 ]; then
    echo "== compiled fixed-slot decoding on $DEVICE: test, then eager vs compiled ($DTYPE)"
    OS_SAMPLE_TEST_COMPILE=1 OS_SAMPLE_TEST_DEVICE=$DEVICE \
      "$PY" -m pytest -q -s -p no:cacheprovider tests/test_compile.py -k compiled_step
    "$PY" benchmarks/bench_compile.py --config "$WORK/bench.yaml" --batch-size "$BATCH" --prompts $((2 * BATCH)) \
      --max-new-tokens "$TOKENS"
  fi
fi
