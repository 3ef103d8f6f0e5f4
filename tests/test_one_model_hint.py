"""One model as theta and teacher, the teacher's prompt carrying a hint (self-distillation with
privileged information): the teacher must see its own prompt, through its own KV cache."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from os_cli import OptimalSamplingModel
from os_cli.cli import _register, app

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus"]
HINTED = ["What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom has 4 apples"]


def _same_seed_run(model, prompts, prompts_t, **kw):
    return model.generate(prompts, prompts_t=prompts_t, max_new_tokens=8, seed=[4, 5, 6], **kw)


def test_teacher_logits_come_from_the_teacher_prompt(tiny_models):
    model = OptimalSamplingModel(tiny_models["theta"], device="cpu", dtype=torch.float32)
    assert model.model_t is model.model_theta  # the weights are loaded once
    # The teacher draws, so the token stream is that of the model alone on the hinted prompts,
    # which a one-stream run on those prompts reproduces with the same keyed draws.
    hinted = _same_seed_run(model, PROMPTS, HINTED, return_logits=True, sample_from="teacher")
    alone = _same_seed_run(model, HINTED, None, return_logits=True, sample_from="theta")
    assert torch.equal(hinted.generated_ids, alone.generated_ids)
    m = hinted.mask
    torch.testing.assert_close(hinted.logits["t"][m], alone.logits["theta"][m], atol=1e-4, rtol=1e-4)
    # ... and theta still sees its own prompt: its logits differ from the teacher's.
    assert not torch.allclose(hinted.logits["theta"][:, 0], hinted.logits["t"][:, 0], atol=1e-3)
    assert (hinted.diagnostics["kl_theta"][m] > 1e-4).any()


def test_one_model_equals_two_copies_of_it(tiny_models, tmp_path):
    copy = shutil.copytree(tiny_models["theta"], tmp_path / "theta-copy")
    one = OptimalSamplingModel(tiny_models["theta"], tiny_models["theta"], device="cpu", dtype=torch.float32)
    two = OptimalSamplingModel(tiny_models["theta"], str(copy), device="cpu", dtype=torch.float32)
    assert one.model_t is one.model_theta and two.model_t is not two.model_theta
    a = _same_seed_run(one, PROMPTS, HINTED)
    b = _same_seed_run(two, PROMPTS, HINTED)
    assert torch.equal(a.generated_ids, b.generated_ids)
    for name in ("alpha", "kl_theta", "kl_t", "ess_ratio"):
        torch.testing.assert_close(a.diagnostics[name], b.diagnostics[name], equal_nan=True, atol=1e-5, rtol=1e-4)
    for side in ("theta", "t", "q"):
        torch.testing.assert_close(a.logprobs[side], b.logprobs[side], equal_nan=True, atol=1e-5, rtol=1e-4)
    # With the hint the two distributions differ, so alpha is not pinned at 0.5 everywhere.
    assert (a.diagnostics["kl_t"][a.mask] > 1e-4).any()


def test_identical_prompts_keep_one_forward_per_step(tiny_models):
    model = OptimalSamplingModel(tiny_models["theta"], device="cpu", dtype=torch.float32)
    calls = []
    hook = model.model_theta.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = model.generate(PROMPTS, prompts_t=list(PROMPTS), max_new_tokens=4, seed=1)
    finally:
        hook.remove()
    steps = int(out.lengths.max())
    assert len(calls) == steps  # prefill + one step per further token, one stream
    torch.testing.assert_close(out.logprobs["q"][out.mask], out.logprobs["theta"][out.mask])


def test_cli_one_model_with_hinted_teacher_matches_two_copies(tiny_models, tmp_path):
    """`models.teacher: null` with a teacher template gives the records of the same model loaded twice."""
    _register()
    runner = CliRunner()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "q": f"What is {i} plus 3?", "hint": str(i + 3)}) + "\n"
                            for i in range(4)))
    copy = shutil.copytree(tiny_models["theta"], tmp_path / "theta-copy")
    results = {}
    for name, teacher in (("one", None), ("two", str(copy))):
        recipe = {
            "models": {"theta": tiny_models["theta"], "teacher": teacher, "dtype": "float32"},
            "sampling": {"max_new_tokens": 5, "batch_size": 2, "seed": 7},
            "dataset": {"source": str(data), "id_field": "id"},
            "prompts": {"theta": {"template": "{q}"}, "teacher": {"template": "{q} Hint: the answer is {hint}."}},
            "output": {"per_token": True},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out = tmp_path / f"out-{name}"
        result = runner.invoke(app, ["generate", "--config", str(path), "--output", str(out)])
        assert result.exit_code == 0, result.output
        results[name] = [json.loads(line) for s in sorted(out.glob("shard-*.jsonl")) for line in s.read_text().splitlines()]
    one, two = results["one"], results["two"]
    assert [r["id"] for r in one] == [r["id"] for r in two] == [f"r{i}" for i in range(4)]
    for a, b in zip(one, two):
        assert a["completion"] == b["completion"] and a["prompt_t"] == b["prompt_t"] != a["prompt"]
        assert a["tokens"]["ids"] == b["tokens"]["ids"]
        for key in ("alpha", "kl_theta", "kl_t", "logprob_t"):
            assert a["tokens"][key] == pytest.approx(b["tokens"][key], abs=1e-4)
    assert any(k > 1e-3 for r in one for k in r["tokens"]["kl_t"])


def test_stream_with_one_model_refuses_a_hint_it_would_ignore(tiny_models):
    from os_cli.api.model import StreamRow

    model = OptimalSamplingModel(tiny_models["theta"], device="cpu", dtype=torch.float32)
    rows = [StreamRow(p, pt, seed=s) for p, pt, s in zip(PROMPTS, HINTED, (4, 5, 6))]
    with pytest.raises(ValueError, match="separate_teacher_prompts=True"):
        list(model.generate_stream(rows, max_new_tokens=8))
    streamed = {r.index: r for r in model.generate_stream(rows, max_new_tokens=8, separate_teacher_prompts=True)}
    batch = _same_seed_run(model, PROMPTS, HINTED)
    for i in range(3):
        n = int(batch.lengths[i])
        assert streamed[i].token_ids.tolist() == batch.generated_ids[i, :n].tolist()
