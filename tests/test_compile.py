"""Fixed-slot decoding (`compile`, os_cli/static_stream.py) against the dynamic-cache path and uncached
recomputation, on real tiny models loaded through from_pretrained; the recipe key and its refusals."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from os_cli import OptimalSamplingModel
from os_cli.api.model import InFlightLimit, StreamRow
from os_cli.api.build import model_kwargs
from os_cli.engine.streams import ModelStream, left_pad
from os_cli.errors import UserError
from os_cli.recipe import load_recipe, recipe_hash
from os_cli.engine.fixed_slots import SlotStream
from os_cli.toy import save_tiny_model, tiny_qwen2_config

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus",
           "Tom has 4 apples", "Question 12: 12 plus", "Explain", "The capital of France", "a b c d e f g"]
PROMPTS_T = ["Question: What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom", "Hi there",
             "Answer briefly.", "The quick brown fox", "Paris", "x"]
CAPS = [6, 30, 2, 19, 11, 30, 4, 15]  # long-tailed: rows leave at very different steps
# torch.compile takes about a minute on 2 CPU cores, so the compiled test runs on request:
# OS_SAMPLE_TEST_COMPILE=1 (scripts/gpu_check.sh sets it, with OS_SAMPLE_TEST_DEVICE=cuda: CUDA graphs).
COMPILE_TEST = os.environ.get("OS_SAMPLE_TEST_COMPILE") == "1"
DEVICE = os.environ.get("OS_SAMPLE_TEST_DEVICE", "cpu")


def _assert_same_rows(a, b):
    """Exact tokens, lengths and finish reasons; per-token floats to float tolerance."""
    assert a.lengths.tolist() == b.lengths.tolist() and a.finish_reasons == b.finish_reasons
    for i in range(len(a.lengths)):
        n = int(a.lengths[i])
        assert a.generated_ids[i, :n].tolist() == b.generated_ids[i, :n].tolist(), i
        for x, y in ((a.alpha_values, b.alpha_values), (a.logprobs["q"], b.logprobs["q"]),
                     (a.logprobs["theta"], b.logprobs["theta"]), (a.logprobs["t"], b.logprobs["t"])):
            torch.testing.assert_close(x[i, :n], y[i, :n], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_slot_stream_logits_equal_uncached_recomputation_across_joins_leaves_moves_and_growth(tiny_models, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float32,
                                                 attn_implementation=attn).eval()
    vocab = model.config.vocab_size
    cap = 7
    stream = SlotStream(model, vocab, slots=3, max_new_tokens=cap, pad_id=0)
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []  # in the stream's batch order: {"ids": all tokens so far, "left": steps before it must end}
    prompt_lengths = iter([4, 2, 9, 3, 5, 1, 6, 2, 30, 3, 7, 2, 4, 5, 3, 8, 2, 6, 4, 3])
    widths, columns, worst = set(), [], 0.0

    def reference(ids):
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids])).logits[0, -1, :vocab]

    with torch.inference_mode():
        for step in range(70):
            free = stream.slots - len(rows)
            if free >= 2 or (free and step % 3 == 0):  # a few rows join at once, as the scheduler admits them
                new = [torch.randint(3, vocab, (next(prompt_lengths, 3),), generator=gen).tolist()
                       for _ in range(1 + (free > 1 and step % 2 == 0))]
                fresh = ModelStream(model, vocab)
                first = fresh.prefill(*left_pad(new, 0, "cpu"))
                for i, ids in enumerate(new):
                    torch.testing.assert_close(first[i], reference(ids), atol=1e-5, rtol=1e-5)
                stream.join(fresh)
                rows += [{"ids": ids, "left": cap - 1} for ids in new]
            tokens = torch.randint(3, vocab, (len(rows),), generator=gen)
            logits = stream.step(tokens)
            for i, row in enumerate(rows):
                row["ids"].append(int(tokens[i]))
                worst = max(worst, float((logits[i] - reference(row["ids"])).abs().max()))
                row["left"] -= 1
            keep = [i for i, row in enumerate(rows) if row["left"] > 0 and torch.rand((), generator=gen) > 0.1]
            stream.keep_rows(torch.tensor(keep, dtype=torch.long))
            rows = [rows[i] for i in keep]
            widths.add(stream.width)
            columns.append(stream.column)
    assert worst < 1e-4
    assert len(widths) == 2, widths  # the 30-token prompt reallocated the buffers once
    assert any(b < a for a, b in zip(columns, columns[1:])), "the windows never moved left"


@pytest.fixture(scope="module")
def pairs(tiny_models):
    kwargs = dict(device="cpu", dtype=torch.float32)
    return (OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher_padded"], **kwargs),
            OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher_padded"], compile="static", **kwargs))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_fixed_slots_give_the_tokens_of_the_default_path(pairs, batch_size):
    default, fixed = pairs
    kwargs = dict(max_new_tokens=CAPS, seed=list(range(20, 28)), batch_size=batch_size, temperature=0.9)
    reference = default.generate(PROMPTS, PROMPTS_T, **kwargs)
    got = fixed.generate(PROMPTS, PROMPTS_T, **kwargs)
    assert reference.lengths.tolist() == CAPS
    _assert_same_rows(reference, got)
    assert got.generated_texts == reference.generated_texts
    again = fixed.generate(PROMPTS, PROMPTS_T, **kwargs)  # the kept slots are reused and start clean
    assert torch.equal(again.generated_ids, got.generated_ids)


def test_fixed_slots_on_one_model_streams_and_eos(pairs):
    """One model, one stream (teacher = theta on the same prompts), rows read lazily and ending at EOS."""
    default, fixed = pairs
    one = OptimalSamplingModel(default.model_theta_path, device="cpu", dtype=torch.float32, compile="static")
    ref = OptimalSamplingModel(default.model_theta_path, device="cpu", dtype=torch.float32)
    def rows():
        return (StreamRow(p, seed=7 + i, max_new_tokens=c) for i, (p, c) in enumerate(zip(PROMPTS, CAPS)))

    a = {o.index: o.token_ids.tolist() for o in ref.generate_stream(rows(), max_new_tokens=30, limit=3)}
    b = {o.index: o.token_ids.tolist() for o in one.generate_stream(rows(), max_new_tokens=30, limit=3)}
    assert a == b and len(a) == len(PROMPTS)
    # Two interleaved streams on one model each get their own slots.
    s1 = one.generate_stream(rows(), max_new_tokens=30, limit=2)
    s2 = one.generate_stream(rows(), max_new_tokens=30, limit=2)
    mixed1, mixed2 = {}, {}
    for x, y in zip(s1, s2):
        mixed1[x.index], mixed2[y.index] = x.token_ids.tolist(), y.token_ids.tolist()
    for x in s1:
        mixed1[x.index] = x.token_ids.tolist()
    for y in s2:
        mixed2[y.index] = y.token_ids.tolist()
    assert mixed1 == a and mixed2 == a


@pytest.mark.skipif(not COMPILE_TEST, reason="about a minute on 2 CPU cores: set OS_SAMPLE_TEST_COMPILE=1 to run it")
@pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA")
def test_compiled_step_equals_the_eager_path(tmp_path, tiny_tokenizer):
    """torch.compile (inductor on the CPU, CUDA graphs on cuda) on a 1-layer model, float32: the tokens
    of the default path, and a second call reuses the compiled step (no recompiles)."""
    path = save_tiny_model(tmp_path / "one-layer", tiny_tokenizer, tiny_qwen2_config(tiny_tokenizer, num_layers=1),
                           seed=5, init_std=0.2)
    from torch._dynamo.utils import counters

    compiled = OptimalSamplingModel(str(path), device=DEVICE, dtype=torch.float32, compile=True)
    default = OptimalSamplingModel(str(path), device=DEVICE, dtype=torch.float32)
    kwargs = dict(max_new_tokens=CAPS, seed=list(range(8)), batch_size=3)
    start = time.monotonic()
    try:
        got = compiled.generate(PROMPTS, **kwargs)
    except torch._dynamo.exc.BackendCompilerFailed as exc:  # e.g. no C++ compiler for inductor's CPU kernels
        pytest.skip(f"torch.compile cannot build kernels on this machine: {str(exc).splitlines()[0]}")
    first = time.monotonic() - start
    graphs = counters["stats"]["unique_graphs"]
    again = compiled.generate(PROMPTS, **kwargs)
    assert counters["stats"]["unique_graphs"] == graphs, "the second call recompiled the step"
    _assert_same_rows(default.generate(PROMPTS, **kwargs), got)
    assert torch.equal(again.generated_ids, got.generated_ids)
    print(f"compiled generate on {DEVICE}, first call (compiling included): {first:.1f} s")


# ---------------------------------------------------------------------- refusals and the recipe key

def test_api_refuses_what_fixed_slots_do_not_do(pairs, tiny_models):
    default, fixed = pairs
    with pytest.raises(ValueError, match="compile must be False, True or 'static'"):
        OptimalSamplingModel(tiny_models["theta"], device="cpu", compile="yes")
    with pytest.raises(ValueError, match="compile needs attn_implementation sdpa or eager"):
        OptimalSamplingModel(tiny_models["theta"], device="cpu", compile=True, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="compile needs draft_tokens=0"):
        fixed.generate(PROMPTS[:2], PROMPTS_T[:2], max_new_tokens=3, draft_tokens=2)
    with pytest.raises(ValueError, match="oom_backoff=False"):
        list(fixed.generate_stream([StreamRow("Hi", "Hi there")], max_new_tokens=3, oom_backoff=True))
    assert fixed.attn_implementation == "sdpa"
    # the static reference loop stays eager: same tokens as without compile
    a = fixed.generate(PROMPTS[:3], PROMPTS_T[:3], max_new_tokens=4, seed=1, loop="static")
    b = default.generate(PROMPTS[:3], PROMPTS_T[:3], max_new_tokens=4, seed=1, loop="static")
    assert torch.equal(a.generated_ids, b.generated_ids)


BASE = {
    "models": {"theta": "org/theta-model", "teacher": "org/teacher-model"},
    "dataset": {"inline": [{"question": "1+1?", "answer": "2"}]},
    "prompts": {"theta": {"template": "{question}"}},
}


def _recipe(tmp_path, *overrides):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return load_recipe(path, list(overrides))


def test_recipe_key_is_checked_and_not_hashed(tmp_path):
    base = _recipe(tmp_path)
    assert base.models.compile is False and "compile" not in model_kwargs(base)
    for value in ("true", "static"):
        on = _recipe(tmp_path, f"models.compile={value}")
        assert recipe_hash(on) == recipe_hash(base)  # same tokens, like batch_size: a run resumes either way
        assert model_kwargs(on)["compile"] == on.models.compile
    for value in ("fast", "1", "0", "null"):
        with pytest.raises(UserError, match=r"models\.compile.*(true, false or static|must not be null)"):
            _recipe(tmp_path, f"models.compile={value}")
    with pytest.raises(UserError, match=r"models\.compile.*needs sampling\.draft_tokens: 0"):
        _recipe(tmp_path, "models.compile=true", "sampling.draft_tokens=2")
    with pytest.raises(UserError, match=r"models\.compile.*not flash_attention_2"):
        _recipe(tmp_path, "models.compile=true", "models.attn_implementation=flash_attention_2")


def test_generate_with_fixed_slots_writes_the_records_of_a_default_run(tmp_path, tiny_models, cli_app):
    rows = [{"question": f"What is {i} plus 3?", "hint": f"{i}+3={i + 3}"} for i in range(5)]
    recipe = {
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
        "sampling": {"max_new_tokens": 6, "batch_size": 2, "seed": 3},
        "dataset": {"inline": rows},
        "prompts": {"theta": {"template": "{question}"}, "teacher": {"template": "{question}\nHint: {hint}"}},
        "output": {"per_token": True},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    runner = CliRunner()
    outputs = {}
    for name, extra in (("default", []), ("static", ["--set", "models.compile=static"])):
        result = runner.invoke(cli_app, ["generate", "--config", str(path), "--output", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for f in sorted((tmp_path / name).glob("shard-*.jsonl"))
                   for line in f.read_text().splitlines()]
        outputs[name] = {r["id"]: (r["completion"], r["tokens"]["ids"]) for r in records}
    assert outputs["static"] == outputs["default"] and len(outputs["default"]) == 5
    bad = runner.invoke(cli_app, ["validate", str(path), "--set", "models.compile=true",
                                  "--set", "sampling.draft_tokens=2"])
    assert bad.exit_code == 2 and "models.compile" in bad.output and "Traceback" not in bad.output
    # 3 rows prefill, then the fixed step runs all 4 slots and (injected) runs out of memory: no back-off
    oom = runner.invoke(cli_app, ["generate", "--config", str(path), "--output", str(tmp_path / "oom"), "--limit", "5",
                                  "--set", "models.compile=static", "--set", "sampling.batch_size=4"],
                        env={"OS_SAMPLE_INJECT_OOM": "4"})
    assert oom.exit_code == 1 and "Traceback" not in oom.output
    assert "out of memory with batch size 4; lower sampling.batch_size (models.compile" in oom.stderr


def test_lowering_the_limit_mid_stream_frees_slots_and_changes_no_row(pairs):
    default, fixed = pairs
    limit = InFlightLimit(4)
    seeds = [3 * i + 1 for i in range(len(PROMPTS))]
    rows = [StreamRow(p, pt, seed=s, max_new_tokens=c) for p, pt, s, c in zip(PROMPTS, PROMPTS_T, seeds, CAPS)]
    got = {}
    for out in fixed.generate_stream(rows, max_new_tokens=max(CAPS), limit=limit):
        got[out.index] = out.token_ids.tolist()
        limit.lower(2)  # rows beyond 2 go back to the queue, their slots free, and restart later
    reference = default.generate(PROMPTS, PROMPTS_T, max_new_tokens=CAPS, seed=seeds, batch_size=8)
    assert got == {i: reference.generated_ids[i, :n].tolist() for i, n in enumerate(reference.lengths.tolist())}
