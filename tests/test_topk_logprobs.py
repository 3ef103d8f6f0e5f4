"""Teacher top-k log-probabilities per token (`output.topk_logprobs`, `generate(topk_logprobs=K)`,
os_cli/topk.py): values against the returned logits on the plain, refilled and speculative loops,
tokens unchanged by recording them, one-model runs, records, resume, bad input and export."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from os_cli import OptimalSamplingModel
from os_cli.cli import _register, app
from os_cli.recipe import load_recipe, recipe_hash

if not any(c.name == "generate" for c in app.registered_commands):
    _register()
runner = CliRunner()

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus", "Tom has"]
HINTED = ["What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom has 4 apples", "Question 12:"]
SEEDS = [3, 4, 5, 6]
ALL = ("t", "theta", "q")


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def single(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], device="cpu", dtype=torch.float32)


def expected_topk(logits_t, logits_theta, q_star_probs, temperature, k):
    """What topk_logprobs must hold, from the returned raw logits: the teacher's tempered full-vocabulary
    log-softmax, its top-k, and theta's / q*'s log-probabilities at those ids."""
    lp_t = torch.log_softmax(logits_t / temperature, -1)
    values, ids = lp_t.topk(k, dim=-1)
    lp_theta = torch.log_softmax(logits_theta / temperature, -1)
    return ids, {"t": values, "theta": lp_theta.gather(-1, ids), "q": q_star_probs.log().gather(-1, ids)}


def check_against_logits(out, temperature, k, of=ALL):
    """Every real position of every row of a SamplingOutput with logits and q* returned."""
    assert out.topk_ids.shape == out.generated_ids.shape + (k,) and set(out.topk_logprobs) == set(of)
    m = out.mask
    ids, values = expected_topk(out.logits["t"][m], out.logits["theta"][m], out.q_star_probs[m], temperature, k)
    assert torch.equal(out.topk_ids[m], ids)
    for name in of:
        torch.testing.assert_close(out.topk_logprobs[name][m], values[name], atol=1e-5, rtol=1e-5)
    # after a row's end: -1 ids, NaN values
    assert bool((out.topk_ids[~m] == -1).all()) and all(bool(v[~m].isnan().all()) for v in out.topk_logprobs.values())
    # sorted, and the sampled token's logprob_t is the value at its id where the token is in the top-k
    t = out.topk_logprobs["t"][m] if "t" in out.topk_logprobs else None
    if t is not None:
        assert bool((t[:, :-1] >= t[:, 1:]).all())
        hit = out.topk_ids[m] == out.generated_ids[m][:, None]
        assert hit.any()
        torch.testing.assert_close(t[hit], out.logprobs["t"][m][hit.any(1)], atol=1e-5, rtol=1e-5)
    return m


def test_values_are_the_teachers_top_k_of_the_returned_logits(pair):
    # user top-k and a temperature: the teacher's stored distribution is the tempered full softmax, q* is cut
    out = pair.generate(PROMPTS, HINTED, max_new_tokens=10, temperature=0.7, top_k=5, seed=SEEDS,
                        return_logits=True, return_q_star_probs=True, topk_logprobs=8, topk_of=list(ALL))
    m = check_against_logits(out, 0.7, 8)
    q = out.topk_logprobs["q"][m]
    assert bool(torch.isinf(q).any()) and bool(torch.isfinite(q).any())  # q* keeps 5 ids; the teacher's 8 differ
    assert not torch.allclose(out.topk_logprobs["t"][m], out.topk_logprobs["theta"][m], atol=1e-3)


def test_tokens_and_traces_do_not_change_when_top_k_is_recorded(pair):
    for draft in (0, 2):
        kw = dict(max_new_tokens=10, temperature=0.9, seed=SEEDS, batch_size=2, draft_tokens=draft)
        off = pair.generate(PROMPTS, HINTED, **kw)
        on = pair.generate(PROMPTS, HINTED, topk_logprobs=4, **kw)
        assert off.topk_ids is None and off.topk_logprobs is None
        assert torch.equal(off.generated_ids, on.generated_ids) and off.generated_texts == on.generated_texts
        for side in ("theta", "t", "q"):
            assert torch.equal(off.logprobs[side].nan_to_num(), on.logprobs[side].nan_to_num())
        assert set(on.topk_logprobs) == {"t"}  # the default: the teacher only


def test_refilled_batches_equal_one_row_at_a_time(pair):
    caps = [10, 3, 7, 10]
    kw = dict(max_new_tokens=caps, temperature=0.8, seed=SEEDS, topk_logprobs=5, topk_of=["t", "q"])
    alone = pair.generate(PROMPTS, HINTED, batch_size=1, **kw)
    refilled = pair.generate(PROMPTS, HINTED, batch_size=3, return_logits=True, return_q_star_probs=True, **kw)
    check_against_logits(refilled, 0.8, 5, of=("t", "q"))
    assert torch.equal(alone.generated_ids, refilled.generated_ids)
    assert torch.equal(alone.topk_ids, refilled.topk_ids)
    for name in ("t", "q"):
        torch.testing.assert_close(alone.topk_logprobs[name], refilled.topk_logprobs[name], atol=2e-5, rtol=1e-4,
                                   equal_nan=True)


def test_speculative_rounds_record_every_emitted_position(pair):
    kw = dict(max_new_tokens=12, temperature=0.9, seed=SEEDS, draft_tokens=2, return_logits=True,
              return_q_star_probs=True, topk_logprobs=6, topk_of=list(ALL))
    out = pair.generate(PROMPTS, HINTED, batch_size=3, **kw)
    check_against_logits(out, 0.9, 6)
    alone = pair.generate(PROMPTS, HINTED, batch_size=1, **kw)
    assert torch.equal(out.topk_ids, alone.topk_ids)


def test_the_stream_and_num_samples_carry_it(pair):
    from os_cli.api.model import StreamRow

    rows = [StreamRow(p, pt, seed=s) for p, pt, s in zip(PROMPTS, HINTED, SEEDS)]
    outs = list(pair.generate_stream(rows, max_new_tokens=6, limit=2, topk_logprobs=3, topk_of="theta"))
    batch = pair.generate(PROMPTS, HINTED, max_new_tokens=6, seed=SEEDS, topk_logprobs=3, topk_of=["theta"])
    for o in outs:
        n = len(o.token_ids)
        assert o.topk_ids.shape == (n, 3) and set(o.topk_logprobs) == {"theta"}
        assert torch.equal(o.topk_ids, batch.topk_ids[o.index, :n])
    many = pair.generate(PROMPTS[:2], HINTED[:2], max_new_tokens=5, seed=SEEDS[:2], num_samples=2, topk_logprobs=2)
    assert many.topk_ids.shape[0] == 4 and many.topk_ids.shape[2] == 2


def test_one_model_runs(single, tiny_models):
    # theta only, identical prompts: one stream; the teacher is theta, so the two distributions agree
    out = single.generate(PROMPTS, max_new_tokens=8, seed=SEEDS, return_logits=True, return_q_star_probs=True,
                          topk_logprobs=4, topk_of=list(ALL))
    m = check_against_logits(out, 1.0, 4)
    torch.testing.assert_close(out.topk_logprobs["t"][m], out.topk_logprobs["theta"][m])
    # hinted teacher (same weights, its own prompt and cache): the teacher's top-k follows the hinted prompt
    hinted = single.generate(PROMPTS, HINTED, max_new_tokens=8, seed=SEEDS, return_logits=True,
                             return_q_star_probs=True, topk_logprobs=4, topk_of=list(ALL))
    m = check_against_logits(hinted, 1.0, 4)
    assert not torch.allclose(hinted.topk_logprobs["t"][m], hinted.topk_logprobs["theta"][m], atol=1e-3)
    alone = single.generate(HINTED, max_new_tokens=8, seed=SEEDS, topk_logprobs=4, sample_from="theta")
    teacher = single.generate(PROMPTS, HINTED, max_new_tokens=8, seed=SEEDS, topk_logprobs=4, sample_from="teacher")
    assert torch.equal(alone.generated_ids, teacher.generated_ids) and torch.equal(alone.topk_ids, teacher.topk_ids)
    # the same model named twice loads once and gives the same numbers
    twice = OptimalSamplingModel(tiny_models["theta"], tiny_models["theta"], device="cpu", dtype=torch.float32)
    again = twice.generate(PROMPTS, HINTED, max_new_tokens=8, seed=SEEDS, topk_logprobs=4, topk_of=list(ALL))
    assert torch.equal(again.topk_ids, hinted.topk_ids)
    torch.testing.assert_close(again.topk_logprobs["q"], hinted.topk_logprobs["q"], equal_nan=True)


@pytest.mark.parametrize("k, of", [(-1, ["t"]), (True, ["t"]), (2.5, ["t"]), ("3", ["t"]), (10_000, ["t"]),
                                   (3, []), (3, ["teacher"]), (3, ["t", "t"]), (3, 5), (3, [["t"]])])
def test_bad_api_arguments_are_refused(pair, k, of):
    with pytest.raises(ValueError, match="topk_"):
        pair.generate(PROMPTS[:1], max_new_tokens=2, topk_logprobs=k, topk_of=of)


def test_the_static_loop_refuses_it_and_zero_is_off(pair):
    with pytest.raises(ValueError, match="loop='refill'"):
        pair.generate(PROMPTS[:1], max_new_tokens=2, topk_logprobs=2, loop="static")
    out = pair.generate(PROMPTS[:1], max_new_tokens=2, topk_logprobs=0)
    assert out.topk_ids is None
    full = pair.generate(PROMPTS[:1], max_new_tokens=2, topk_logprobs=pair.vocab_size, seed=1)
    torch.testing.assert_close(full.topk_logprobs["t"][0, 0].exp().sum(), torch.tensor(1.0))


def test_fallback_rows_use_the_distribution_logprob_t_and_logprob_theta_use():
    """A row whose teacher (theta) logits are unusable is drawn from the other model alone; its stored
    top-k follows the sampler's own replacement, so it agrees with the recorded logprob_t / logprob_theta."""
    from os_cli.mix.sampler import FALLBACK_TEACHER_ONLY, FALLBACK_THETA_ONLY, SamplerConfig, mixture_step
    from os_cli.mix.topk import topk_columns, topk_spec

    g = torch.Generator().manual_seed(0)
    theta, teacher = torch.randn(3, 50, generator=g) * 3, torch.randn(3, 50, generator=g) * 3
    teacher[1] = float("nan")  # row 1: the teacher is unusable
    theta[2, 7] = float("inf")  # row 2: theta is
    config = SamplerConfig(temperature=0.5)
    out = mixture_step(theta, teacher, config, generator=g)
    assert out.fallback.tolist() == [0, FALLBACK_THETA_ONLY, FALLBACK_TEACHER_ONLY]
    spec = topk_spec(50, ["t", "theta", "q"], vocab_size=50)
    ids, values = topk_columns(spec, 0.5, theta[:, None], teacher[:, None], out.logq[:, None], out.fallback[:, None])
    ids, values = ids[:, 0], dict(zip(spec.of, values[:, :, 0]))
    assert all(bool(torch.isfinite(v).all()) for v in values.values())
    at_token = lambda v: v.gather(1, (ids == out.tokens[:, None]).long().argmax(1, keepdim=True)).squeeze(1)  # noqa
    for name, recorded in (("t", out.logprob_t), ("theta", out.logprob_theta), ("q", out.logprob_q)):
        torch.testing.assert_close(at_token(values[name]), recorded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values["t"][1], values["theta"][1])  # row 1: theta in the teacher's place
    torch.testing.assert_close(values["t"][2], values["theta"][2])  # row 2: the teacher in theta's place
    assert topk_spec(0) is None and topk_spec(None) is None


# --------------------------------------------------------------------------------------------------
# generate: records, resume, bad values, export, inspect


@pytest.fixture
def work(tmp_path, tiny_models):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus 3?", "answer": str(i + 3)}) + "\n"
                            for i in range(4)))

    def write(name: str, output: dict, **dataset) -> str:
        recipe = {
            "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
            "sampling": {"max_new_tokens": 6, "batch_size": 3, "seed": 5, "temperature": 0.9},
            "dataset": {"source": str(data), **dataset},
            "prompts": {"theta": {"template": "{question}", "chat_template": False},
                        "teacher": {"template": "{question} ({answer})", "chat_template": False}},
            "output": {"shard_size": 3, **output},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return str(path)

    return write, tmp_path


def gen(recipe, out, *extra):
    return runner.invoke(app, ["generate", "--config", recipe, "--output", str(out), *map(str, extra)])


def records(out) -> dict:
    return {json.loads(line)["id"]: json.loads(line) for s in sorted(out.glob("shard-*.jsonl"))
            for line in s.read_text().splitlines()}


def test_records_carry_the_top_k_and_resume(work, pair):
    write, tmp = work
    out = tmp / "out"
    recipe = write("topk", {"topk_logprobs": 3, "topk_of": ["theta", "t"]}, limit=2)  # per_token left false
    result = gen(recipe, out)
    assert result.exit_code == 0, result.output
    first = records(out)
    assert set(first) == {"0", "1"}
    for rec in first.values():
        toks = rec["tokens"]
        n = rec["num_tokens"]
        assert len(toks["ids"]) == len(toks["topk_ids"]) == len(toks["topk_logprob_t"]) == n
        assert "topk_logprob_q" not in toks and all(len(ids) == 3 for ids in toks["topk_ids"])
        for i, tok in enumerate(toks["ids"]):
            if tok in toks["topk_ids"][i]:
                assert toks["topk_logprob_t"][i][toks["topk_ids"][i].index(tok)] == pytest.approx(
                    toks["logprob_t"][i], abs=1e-5)
    # the API on the same prompts and the run's seed gives the same ids and values
    loaded = load_recipe(recipe)
    from os_cli.run.loop import unit_seed

    class Item:
        index = 1

    rec = first["1"]
    api = pair.generate([rec["prompt"]], [rec["prompt_t"]], max_new_tokens=6, temperature=0.9,
                        seed=[unit_seed(loaded.sampling.seed, Item, 0)], topk_logprobs=3, topk_of=["t", "theta"])
    n = rec["num_tokens"]
    assert api.generated_ids[0, :n].tolist() == rec["tokens"]["ids"], (rec["prompt"], rec["prompt_t"])
    assert api.topk_ids[0, :n].tolist() == first["1"]["tokens"]["topk_ids"]
    torch.testing.assert_close(api.topk_logprobs["theta"][0, :n], torch.tensor(rec["tokens"]["topk_logprob_theta"]),
                               atol=1e-5, rtol=1e-5)
    # resume: dataset.limit is not hashed, so the larger limit extends the run; the first records stay
    result = gen(write("topk4", {"topk_logprobs": 3, "topk_of": ["t", "theta"]}), out)
    assert result.exit_code == 0, result.output
    assert "2 of 4" in result.stderr
    after = records(out)
    assert set(after) == {"0", "1", "2", "3"} and all(after[k] == v for k, v in first.items())
    # another K changes the records: refused like any hashed key
    changed = gen(write("topk5", {"topk_logprobs": 5, "topk_of": ["t", "theta"]}), out)
    assert changed.exit_code == 2 and "output.topk_logprobs" in changed.output and "Traceback" not in changed.output
    # inspect reads the folder
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output


def test_folders_without_the_key_keep_their_hash(work):
    write, _ = work
    plain = load_recipe(write("plain", {"per_token": True}))
    assert plain.output.topk_logprobs == 0 and plain.output.topk_of == ("t",)
    old = json.loads(json.dumps(plain.to_dict()))
    del old["output"]["topk_logprobs"], old["output"]["topk_of"]  # a recipe stored before the keys existed
    assert recipe_hash(plain) == recipe_hash(old)
    on = load_recipe(write("on", {"per_token": True, "topk_logprobs": 2}))
    assert recipe_hash(on) != recipe_hash(plain)
    # the order of topk_of does not matter; the set does
    a = load_recipe(write("a", {"topk_logprobs": 2, "topk_of": ["q", "t"]}))
    b = load_recipe(write("b", {"topk_logprobs": 2, "topk_of": ["t", "q"]}))
    assert a.output.topk_of == ("t", "q") and recipe_hash(a) == recipe_hash(b)
    assert a.source.warnings == ()
    idle = load_recipe(write("idle", {"topk_of": ["theta"]}))  # names without K: a warning, not silence
    assert idle.source.warnings == ("output.topk_of ['theta'] has no effect while output.topk_logprobs is 0 (off)",)


@pytest.mark.parametrize("output, needle", [
    ({"topk_logprobs": -1}, "output.topk_logprobs: must be >= 0"),
    ({"topk_logprobs": "three"}, "output.topk_logprobs: must be an integer"),
    ({"topk_logprobs": 2.5}, "output.topk_logprobs: must be an integer"),
    ({"topk_logprobs": 100_000}, "output.topk_logprobs: 100000 is more than the vocabulary"),
    ({"topk_logprobs": 2, "topk_of": ["teacher"]}, "output.topk_of: must be a non-empty list of names among"),
    ({"topk_logprobs": 2, "topk_of": []}, "output.topk_of: must be a non-empty list"),
    ({"topk_logprobs": 2, "topk_of": ["t", "t"]}, "output.topk_of: lists a name twice"),
])
def test_bad_values_exit_2_with_the_key_and_nothing_written(work, output, needle):
    write, tmp = work
    out = tmp / "bad"
    result = gen(write("bad", output), out)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert needle in text and "Traceback" not in text
    assert not out.exists()


def test_validate_shows_the_keys(work):
    write, _ = work
    result = runner.invoke(app, ["validate", write("v", {"topk_logprobs": 4, "topk_of": ["q", "t"]})])
    assert result.exit_code == 0, result.output
    assert "(per token, with topk_logprobs: 4 of t, q)" in result.output


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_export_carries_the_top_k_columns(work, fmt):
    import datasets

    write, tmp = work
    out = tmp / "run"
    assert gen(write("e", {"topk_logprobs": 2, "topk_of": ["t", "q"]}, limit=3), out).exit_code == 0
    target = tmp / ("x.parquet" if fmt == "parquet" else "x_ds")
    result = runner.invoke(app, ["export", str(out), "--format", fmt, "--to", str(target)])
    assert result.exit_code == 0, result.output
    ds = (datasets.load_dataset("parquet", data_files=str(target), split="train") if fmt == "parquet"
          else datasets.load_from_disk(str(target)))
    recs = records(out)
    for row in ds:
        toks = recs[row["id"]]["tokens"]
        assert row["tokens_ids"] == toks["ids"] and row["tokens_topk_ids"] == toks["topk_ids"]
        assert row["tokens_topk_logprob_t"] == toks["topk_logprob_t"]
        assert row["tokens_topk_logprob_q"] == toks["topk_logprob_q"]  # null where q* cut an id
