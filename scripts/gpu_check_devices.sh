#!/usr/bin/env bash
# GPU check of per-model placement (issue 11 item 5), on the bundled demo pair, offline, float32.
# Needs one CUDA device; about a minute. Run from the repository root:
#   scripts/gpu_check_devices.sh            (PY=path/to/python to use another interpreter)
# Exit 0 when every check passes; prints one line per check and a final PASS/FAIL.
#
#  1. reference: both models on cuda:0.
#  2. theta on cuda:0, teacher `device_map: auto` with max_memory {0: 1MiB, cpu: 1GiB}: the teacher
#     is spread over cuda:0 and the CPU; its logits must arrive on cuda:0 (theta's device).
#  3. theta on cpu, teacher on cuda:0: the teacher's logits cross from cuda:0 to the CPU.
#  4. theta on cuda:0, teacher device_map {"": 0}.
#  Same tokens as the reference in every placement, log-probabilities within 1e-4.
#  5. the CLI: `--set models.per_model.teacher.device=cuda:N` with N = the device count exits 2
#     naming the key, before any model loads; the demo recipe with the teacher spread by
#     device_map auto writes the same completions as with the default placement.
#  6. with bitsandbytes installed: a 4-bit teacher (nf4, compute bfloat16) beside a float32 theta runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-$(mktemp -d)}"

"$PY" - "$OUT" <<'EOF'
import json, subprocess, sys
from pathlib import Path

import torch

from os_cli.api.model import OptimalSamplingModel

out_dir = Path(sys.argv[1])
assert torch.cuda.is_available(), "no CUDA device: this check needs a GPU"
failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        failures.append(name)


THETA, TEACHER = "builtin:demo-theta", "builtin:demo-teacher"
prompts = [f"Question: What is {i} plus {i + 3}? Answer:" for i in range(6)]
prompts_t = [p + " Hint: add them." for p in prompts]


def run(**kwargs):
    model = OptimalSamplingModel(THETA, TEACHER, dtype="float32", **kwargs)
    out = model.generate(prompts, prompts_t=prompts_t, max_new_tokens=24, seed=7)
    return model, out


ref_model, ref = run(device="cuda:0")
placements = {
    "teacher device_map auto over cuda:0 + cpu": dict(
        device="cuda:0", teacher_kwargs={"device_map": "auto", "max_memory": {0: "1MiB", "cpu": "1GiB"}}),
    "theta cpu, teacher cuda:0": dict(device="cpu", device_t="cuda:0"),
    "teacher device_map {'': 0}": dict(device="cuda:0", teacher_kwargs={"device_map": {"": 0}}),
}
for name, kwargs in placements.items():
    try:
        model, out = run(**kwargs)
    except Exception as exc:  # noqa: BLE001 - report and go on
        check(name, False, f"{type(exc).__name__}: {exc}")
        continue
    spread = sorted(set(map(str, (getattr(model.model_t, "hf_device_map", None) or {}).values())))
    same = torch.equal(out.generated_ids, ref.generated_ids)
    diff = max(float((out.logprobs[s] - ref.logprobs[s]).nan_to_num().abs().max()) for s in ("theta", "t", "q"))
    check(name, same and diff < 1e-4, f"(theta {model.device}, teacher input {model.device_t}, map {spread or '-'}, "
                                      f"same tokens {same}, max |d logprob| {diff:.2e})")
    if "auto" in name:
        check("teacher really spread over two devices", len(spread) >= 2, f"{spread}")
    # the teacher's logits come out on theta's device
    from os_cli import engine

    ids, mask = model.encode(prompts_t, teacher=True)
    stream = engine.ModelStream(model.model_t, model.vocab_size, output_device=model.device)
    logits = stream.prefill(ids, mask)
    check(f"{name}: teacher logits on theta's device", logits.device == torch.device(model.device)
          or (logits.device.type == model.device.type == "cuda"), str(logits.device))

# The CLI: a device index beyond the count is refused before loading; placement keeps completions.
count = torch.cuda.device_count()
cli = [sys.executable, "-m", "os_cli", "generate", "--config", "demo", "--limit", "6",
       "--set", "sampling.max_new_tokens=24", "--set", "models.dtype=float32"]
bad = subprocess.run(cli + ["--output", str(out_dir / "bad"), "--set", f"models.per_model.teacher.device=cuda:{count}"],
                     capture_output=True, text=True)
check("cuda:N beyond the count exits 2 with the key", bad.returncode == 2
      and "models.per_model.teacher.device" in bad.stderr + bad.stdout and not (out_dir / "bad").exists(),
      (bad.stderr + bad.stdout).strip().splitlines()[-1:])
runs = {}
for name, extra in {"default": [], "spread": ["--set", "models.device=cuda:0",
                                             "--set", "models.per_model.teacher.device_map=auto",
                                             "--set", "models.per_model.teacher.max_memory={0: 1MiB, cpu: 1GiB}"]}.items():
    done = subprocess.run(cli + ["--output", str(out_dir / name)] + extra, capture_output=True, text=True)
    records = [json.loads(line) for s in sorted((out_dir / name).glob("shard-*.jsonl")) for line in s.read_text().splitlines()]
    runs[name] = [(r["id"], r["completion"]) for r in records]
    check(f"CLI {name} run", done.returncode == 0 and len(records) == 6, done.stderr.strip().splitlines()[-1:])
check("CLI completions identical with the teacher spread", runs["default"] == runs["spread"])

try:
    import bitsandbytes  # noqa: F401
except ImportError:
    print("skip 4-bit teacher: bitsandbytes is not installed")
else:
    try:
        model = OptimalSamplingModel(THETA, TEACHER, device="cuda:0", dtype="float32",
                                     teacher_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                     "bnb_4bit_compute_dtype": "bfloat16"})
        out = model.generate(prompts, prompts_t=prompts_t, max_new_tokens=24, seed=7)
        check("4-bit teacher beside float32 theta", bool(torch.isfinite(out.logprobs["q"][out.mask]).all()),
              f"quantized: {getattr(model.model_t, 'is_loaded_in_4bit', '?')}")
    except Exception as exc:  # noqa: BLE001
        check("4-bit teacher beside float32 theta", False, f"{type(exc).__name__}: {exc}")

print("PASS" if not failures else f"FAIL: {', '.join(failures)}")
sys.exit(1 if failures else 0)
EOF
