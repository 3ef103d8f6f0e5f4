"""os-sample inspect and os_cli.report.summary: numbers, integrity, JSON, --by, errors, answer matching."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from os_cli.report import answers as A
from os_cli.report import stats
from os_cli.report import summary as S
from os_cli.errors import UserError

METHODS = ("kl_symmetry", "entropy")


# --------------------------------------------------------------------------------------------------
# Hand-written output folders in the documented format (ARCHITECTURE.md, "Outputs of generate")


def make_record(i: int, rng: random.Random, per_token: bool) -> dict:
    n = rng.randint(1, 12)
    alpha = [rng.uniform(0.5, 1.0) for _ in range(n)]
    lt = [rng.uniform(-6, -0.1) for _ in range(n)]
    lteach = [rng.uniform(-4, -0.1) for _ in range(n)]
    lq = [rng.uniform(-5, -0.1) for _ in range(n)]
    answer = str(i * 3)
    correct = i % 3 != 0
    completion = f"Let me think. {i} times 3 is \\boxed{{{i * 3 if correct else i * 3 + 1}}}"

    def agg(v):
        return {"mean": sum(v) / len(v), "min": min(v), "max": max(v)}

    rec = {
        "id": str(i),
        "alpha_method": METHODS[i % 2],
        "prompt": f"Q{i}",
        "prompt_t": f"Q{i} (teacher)",
        "completion": completion,
        "num_tokens": n,
        "finish_reason": "eos" if i % 4 else "length",
        "alpha": agg(alpha),
        "ess_ratio": agg([rng.uniform(0.2, 1.0) for _ in range(n)]),
        "kl_theta": agg([rng.uniform(0, 2) for _ in range(n)]),
        "kl_t": agg([rng.uniform(0, 1) for _ in range(n)]),
        "logprob": {"theta": sum(lt), "t": sum(lteach), "q": sum(lq)},
        "row": {"question": f"What is {i} times 3?", "answer": answer, "level": "hard" if i < 4 else "easy"},
    }
    if per_token:
        rec["tokens"] = {"ids": list(range(n)), "alpha": alpha, "logprob_theta": lt, "logprob_t": lteach,
                         "logprob_q": lq}
    return rec


def make_run(root: Path, n: int = 10, per_token: bool = True, shards: int = 2, status: str = "complete",
             errors: list[dict] | None = None) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    records = [make_record(i, rng, per_token) for i in range(n)]
    skipped = {e["id"] for e in errors or []}
    written = [r for r in records if r["id"] not in skipped]
    per_shard = -(-len(written) // shards)
    for s in range(shards):
        chunk = written[s * per_shard:(s + 1) * per_shard]
        with open(root / f"shard-{s:05d}.jsonl", "w") as fh:
            for r in chunk:
                fh.write(json.dumps(r) + "\n")
    (root / "ids.txt").write_text("".join(f"{r['id']}\n" for r in records))
    if errors:
        (root / "errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors))
    manifest = {
        "format": 1, "recipe": {"alpha": {"method": "kl_symmetry"}, "dataset": {"answer_field": "answer"}},
        "recipe_hash": "sha256:0", "versions": {}, "models": {"theta": "theta", "teacher": "teacher"}, "seed": 0,
        "device": "cpu", "world_size": 1, "started_at": "2025-01-01T00:00:00", "updated_at": "2025-01-01T00:00:00",
        "finished_at": None, "status": status,
        "counts": {"planned": n, "records": len(written), "errors": len(errors or [])}, "ids_file": "ids.txt",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return written


def read_shards(root: Path) -> list[dict]:
    out = []
    for p in sorted(root.glob("shard-*.jsonl")):
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


@pytest.fixture(scope="module")
def runner_app(cli_app):
    return cli_app


def invoke(app, *args):
    return CliRunner().invoke(app, ["inspect", *map(str, args)], env={"COLUMNS": "200"})


# --------------------------------------------------------------------------------------------------
# Numbers


def test_summary_agrees_with_direct_recomputation(tmp_path):
    make_run(tmp_path / "run", n=13, shards=3)
    recs = read_shards(tmp_path / "run")
    s = S.summarize_dir(tmp_path / "run")
    o = s["overall"]

    assert o["records"] == len(recs) == 13
    assert [sh["records"] for sh in s["shards"]] == [5, 5, 3]
    lengths = np.array([r["num_tokens"] for r in recs])
    assert o["tokens"]["total"] == lengths.sum()
    assert o["tokens"]["mean"] == pytest.approx(lengths.mean())
    assert o["tokens"]["distribution"]["quantiles"]["p50"] == pytest.approx(np.median(lengths))
    hist = o["tokens"]["distribution"]["histogram"]
    assert sum(hist["counts"]) == 13
    assert hist["integer"] and hist["edges"] == list(range(lengths.min(), lengths.max() + 2))  # a bin per length
    assert hist["counts"][0] == (lengths == lengths.min()).sum()
    assert o["finish_reasons"] == {"eos": 9, "length": 4}

    for key in S.DIAGNOSTICS:
        means = np.array([r[key]["mean"] for r in recs])
        d = o["diagnostics"][key]["per_record"]
        assert d["mean"] == pytest.approx(means.mean())
        assert d["std"] == pytest.approx(means.std())
        assert d["min"] == pytest.approx(means.min()) and d["max"] == pytest.approx(means.max())
        assert d["quantiles"]["p95"] == pytest.approx(np.quantile(means, 0.95))
    alpha_tokens = np.concatenate([r["tokens"]["alpha"] for r in recs])
    d = o["diagnostics"]["alpha"]["per_token"]
    assert d["count"] == alpha_tokens.size == lengths.sum()
    assert d["mean"] == pytest.approx(alpha_tokens.mean())
    assert d["quantiles"]["p25"] == pytest.approx(np.quantile(alpha_tokens, 0.25))
    assert o["diagnostics"]["ess_ratio"]["per_token"] is None  # not in the records' `tokens`

    for key in S.LOGPROB_KEYS:
        assert o["logprob"][key]["mean"] == pytest.approx(np.mean([r["logprob"][key] for r in recs]))
    lw = np.array([r["logprob"]["theta"] - r["logprob"]["q"] for r in recs])
    assert o["log_weight"]["mean_per_token"] == pytest.approx(lw.sum() / lengths.sum())
    assert o["log_weight"]["per_record"]["mean"] == pytest.approx(lw.mean())
    assert o["log_weight"]["per_record_per_token"]["mean"] == pytest.approx((lw / lengths).mean())
    # per-token log weights agree with the sequence sums
    assert o["log_weight"]["per_token"]["mean"] == pytest.approx(lw.sum() / lengths.sum())
    w = np.exp(lw - lw.max())
    assert o["log_weight"]["ess_fraction"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum() / len(w))

    pos = o["by_position"]["alpha"]
    assert pos["count"][0] == 13
    assert pos["mean"][0] == pytest.approx(np.mean([r["tokens"]["alpha"][0] for r in recs]))

    answers = o["answers"]
    assert answers["field"] == "answer" and answers["with_reference"] == 13
    assert answers["correct"] == sum(1 for i in range(13) if i % 3 != 0)
    assert s["integrity"]["clean"] and s["integrity"]["missing"]["count"] == 0


def test_stat_reservoir_keeps_exact_moments():
    st = stats.Stat(cap=100, seed=0)
    rng = np.random.default_rng(1)
    data = rng.normal(size=5000)
    for chunk in np.array_split(data, 37):
        st.add_many(chunk)
    st.add_many([None, float("nan"), float("inf")])
    d = st.to_dict()
    assert d["count"] == 5000 and d["nonfinite"] == 3 and d["sampled"]
    assert d["mean"] == pytest.approx(data.mean()) and d["std"] == pytest.approx(data.std())
    assert d["min"] == data.min() and d["max"] == data.max()
    assert sum(d["histogram"]["counts"]) == 100
    assert abs(d["quantiles"]["p50"] - np.median(data)) < 0.4  # a sample of 100


def test_integer_values_get_integer_bins():
    """Token counts spanning more values than HIST_BINS: integer edges of one integer width, labelled by the
    values each row holds (not [17, 19.8))."""
    from os_cli.cli.inspect_tables import text_histogram

    st = stats.Stat()
    lengths = [17, 18, 18, 40, 41, 63, 90, 119, 130, 17, 25, 25, 26]
    st.add_many(lengths)
    hist = st.to_dict()["histogram"]
    edges = hist["edges"]
    assert hist["integer"] and all(type(e) is int for e in edges)
    widths = {b - a for a, b in zip(edges, edges[1:])}
    assert len(widths) == 1 and widths.pop() == 6 and len(hist["counts"]) <= stats.HIST_BINS  # 114 values / 20
    assert edges[0] == 17 and edges[-2] <= 130 < edges[-1] and sum(hist["counts"]) == len(lengths)
    assert hist["counts"][0] == 4 and hist["counts"][1] == 3  # 17, 17, 18, 18 | 25, 25, 26
    labels = [line.split()[0] for line in text_histogram(hist).splitlines()]
    assert labels[0] == "17–28" and labels[-1] == "125–130"  # two bins per row (at most 10 rows)
    assert all(re.fullmatch(r"\d+–\d+", label) for label in labels), labels

    small = stats.Stat()
    small.add_many([3, 5, 5, 7])
    hist = small.to_dict()["histogram"]
    assert hist["edges"] == [3, 4, 5, 6, 7, 8] and hist["counts"] == [1, 0, 2, 0, 1]
    assert [line.split()[0] for line in text_histogram(hist).splitlines()] == ["3", "4", "5", "6", "7"]

    floats = stats.Stat()
    floats.add_many([0.0, 0.5, 20.0])  # edges 0, 1, ..., 20 by chance: still a float histogram
    hist = floats.to_dict()["histogram"]
    assert not hist["integer"] and text_histogram(hist).splitlines()[0].strip().startswith("[")
    huge = stats.Stat()
    huge.add_many([1e30, 2e30, 5e30])  # whole numbers only because floats that large are
    assert not huge.to_dict()["histogram"]["integer"]


def test_records_without_tokens_or_diagnostics(tmp_path):
    make_run(tmp_path / "run", n=4, per_token=False, shards=1)
    with open(tmp_path / "run" / "shard-00000.jsonl", "a") as fh:
        empty = {"mean": None, "min": None, "max": None}
        fh.write(json.dumps({"id": "extra", "alpha_method": "fixed", "prompt": "", "prompt_t": "", "completion": "",
                             "num_tokens": 0, "finish_reason": "length", "alpha": empty, "ess_ratio": empty,
                             "kl_theta": empty, "kl_t": empty, "logprob": {"theta": None, "t": None, "q": None},
                             "row": {}}) + "\n")
    s = S.summarize_dir(tmp_path / "run")
    o = s["overall"]
    assert o["records"] == 5
    assert o["diagnostics"]["alpha"]["per_record"]["count"] == 4
    assert o["diagnostics"]["alpha"]["per_record"]["nonfinite"] == 1
    assert o["diagnostics"]["alpha"]["per_token"] is None and o["by_position"] is None
    assert s["integrity"]["unexpected"]["ids"] == ["extra"]
    json.dumps(s, allow_nan=False)


# --------------------------------------------------------------------------------------------------
# Integrity


def test_torn_line_duplicate_and_missing_id_are_reported(tmp_path, runner_app):
    root = tmp_path / "run"
    recs = make_run(root, n=8, shards=2, errors=[{"id": "5", "reason": "template error", "row": {}}])
    shard0, shard1 = root / "shard-00000.jsonl", root / "shard-00001.jsonl"
    lines0 = shard0.read_text().splitlines(keepends=True)
    missing_id = json.loads(lines0[1])["id"]
    dup = lines0[0]
    shard0.write_text(lines0[0] + "".join(lines0[2:]))  # drop one record
    with open(shard1, "a") as fh:
        fh.write(dup)  # duplicate of shard0's first record
        fh.write('{"id": "99", "completion": "cut sh')  # torn tail, no newline
    n1 = len(shard1.read_text().splitlines())

    s = S.summarize_dir(root)
    it = s["integrity"]
    assert it["missing"] == {"count": 1, "rows": 1, "ids": [missing_id], "samples": [[missing_id, 0]]}  # the skipped row "5" is not missing
    assert it["duplicates"]["count"] == 1 and it["duplicates"]["ids"][0]["id"] == json.loads(dup)["id"]
    assert it["duplicates"]["ids"][0]["locations"] == ["shard-00000.jsonl:1", f"shard-00001.jsonl:{n1 - 1}"]
    assert it["invalid_lines"]["count"] == 1 and it["invalid_lines"]["torn"] == 1
    assert it["invalid_lines"]["lines"][0] == {"file": "shard-00001.jsonl", "line": n1, "kind": "torn",
                                               "error": "torn line (no newline, cut short)"}
    assert it["errors"]["count"] == 1 and it["errors"]["reasons"] == {"template error": 1}
    assert not it["clean"]
    assert s["overall"]["records"] == len(recs) - 1 + 1  # one dropped, one duplicated

    result = invoke(runner_app, root)
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert f"shard-00001.jsonl:{n1} torn" in out
    assert "missing ids" in out and "duplicated ids" in out and "template error: 1" in out
    assert "problems found" in out


def test_invalid_line_in_the_middle_is_not_torn(tmp_path):
    root = tmp_path / "run"
    make_run(root, n=4, shards=1)
    shard = root / "shard-00000.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text(lines[0] + "not json\n" + "[1, 2]\n" + "".join(lines[1:]))
    bad = S.summarize_dir(root)["integrity"]["invalid_lines"]
    assert [(p["line"], p["kind"]) for p in bad["lines"]] == [(2, "invalid"), (3, "invalid")]
    assert bad["torn"] == 0


# --------------------------------------------------------------------------------------------------
# CLI: JSON, --by, errors, plot


def test_json_round_trips(tmp_path, runner_app):
    make_run(tmp_path / "run", n=6)
    result = invoke(runner_app, tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == S.summarize_dir(tmp_path / "run")


def test_by_splits_every_table(tmp_path, runner_app):
    make_run(tmp_path / "run", n=10)
    s = S.summarize_dir(tmp_path / "run", by="alpha_method")
    assert set(s["groups"]) == set(METHODS)
    assert s["groups"]["kl_symmetry"]["records"] == 5 and s["groups"]["entropy"]["records"] == 5
    recs = read_shards(tmp_path / "run")
    ent = [r for r in recs if r["alpha_method"] == "entropy"]
    assert s["groups"]["entropy"]["diagnostics"]["alpha"]["per_record"]["mean"] == pytest.approx(
        np.mean([r["alpha"]["mean"] for r in ent]))
    assert s["groups"]["entropy"]["tokens"]["total"] == sum(r["num_tokens"] for r in ent)

    by_row = S.summarize_dir(tmp_path / "run", by="level")  # not top-level: looked up in row
    assert {k: g["records"] for k, g in by_row["groups"].items()} == {"easy": 6, "hard": 4}
    with pytest.raises(UserError, match=r"--by nope: no record has this field; fields the records have: .*level"):
        S.summarize_dir(tmp_path / "run", by="nope")

    result = invoke(runner_app, tmp_path / "run", "--by", "alpha_method")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("kl_symmetry") >= 5 and result.stdout.count("entropy") >= 5  # one per table
    result = invoke(runner_app, tmp_path / "run", "--by", "level", "--json")
    assert set(json.loads(result.stdout)["groups"]) == {"easy", "hard"}


def _rendered(summary: dict, width: int) -> str:
    """What `inspect` prints at `width` columns (a Console like out_console: soft wrap, nothing cropped)."""
    import io

    from rich.console import Console

    from os_cli.cli.inspect_tables import render

    console = Console(width=width, file=io.StringIO(), soft_wrap=True)
    render(summary, console)
    return console.file.getvalue()


SPLIT_TABLES = ("Records", "Length (generated", "Mixture diagnostics", "Log-probabilities")


def _words(lines: list[str]) -> set[str]:
    def number(word):
        try:
            float(word.replace(",", "").rstrip("%"))
        except ValueError:
            return False
        return True

    return {w for line in lines for w in line.split() if not number(w) and set(w) != {"─"}}


@pytest.mark.parametrize("by", ["alpha_method", "finish_reason", "level"])
def test_split_tables_at_80_columns_never_break_a_word(tmp_path, by):
    """At 80 columns labels wrap between words, never inside one (`alpha_metho` / `d`, `KL(q||pi_t` / `heta)`):
    every word of the 80-column tables is a word of the same tables drawn wide."""
    from rich.cells import cell_len
    from rich_tables import table_lines

    make_run(tmp_path / "run", n=10)
    summary = S.summarize_dir(tmp_path / "run", by=by)
    narrow = table_lines(_rendered(summary, 80), SPLIT_TABLES)
    assert len(narrow) > 20 and max(cell_len(line) for line in narrow) <= 80, max(narrow, key=cell_len)
    wide = _words(table_lines(_rendered(summary, 300), SPLIT_TABLES))
    assert {by, "KL(q||pi_theta)", "KL(q||pi_t)", *summary["groups"]} <= wide
    assert _words(narrow) - wide == set()


def test_a_long_group_label_folds_but_the_table_fits(tmp_path):
    """A group label too long for 80 columns is folded (it is user data); the tables still fit and our own
    labels stay whole."""
    from rich.cells import cell_len
    from rich_tables import table_lines

    make_run(tmp_path / "run", n=6)
    for shard in (tmp_path / "run").glob("shard-*.jsonl"):
        records = [json.loads(line) for line in shard.read_text().splitlines()]
        for r in records:
            r["row"]["difficulty_category_name"] = "very_hard_problems_from_the_olympiad" if int(r["id"]) % 2 else "x"
        shard.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = S.summarize_dir(tmp_path / "run", by="difficulty_category_name")
    narrow = table_lines(_rendered(summary, 80), SPLIT_TABLES)
    assert max(cell_len(line) for line in narrow) <= 80, max(narrow, key=cell_len)
    words = _words(narrow)
    assert {"KL(q||pi_theta)", "KL(q||pi_t)", "record", "means", "quantity"} <= words


@pytest.mark.parametrize("kind", ["missing", "empty", "foreign", "file"])
def test_unusable_folder_is_a_clear_error(tmp_path, runner_app, kind):
    target = tmp_path / "x"
    if kind == "empty":
        target.mkdir()
    elif kind == "foreign":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
        (target / "data.jsonl").write_text("{}\n")
    elif kind == "file":
        target.write_text("hi")
    result = invoke(runner_app, target)
    assert result.exit_code == 2
    assert "Traceback" not in result.output and result.stdout == ""
    assert str(target) in result.stderr
    assert {"missing": "no such folder", "empty": "empty", "foreign": "not an os-sample output folder",
            "file": "not a folder"}[kind] in result.stderr


def test_shards_without_manifest_still_summarised(tmp_path):
    make_run(tmp_path / "run", n=4)
    (tmp_path / "run" / "manifest.json").unlink()
    s = S.summarize_dir(tmp_path / "run")
    assert s["manifest"] is None and s["overall"]["records"] == 4
    assert s["answer_field"] == "answer"  # default when no recipe says otherwise


def test_answer_field_option(tmp_path, runner_app):
    make_run(tmp_path / "run", n=6)
    result = invoke(runner_app, tmp_path / "run", "--json", "--answer-field", "question")
    a = json.loads(result.stdout)["overall"]["answers"]
    assert a["field"] == "question" and a["correct"] == 0  # "What is i times 3?" -> last number 3
    result = invoke(runner_app, tmp_path / "run", "--json", "--answer-field", "")
    assert json.loads(result.stdout)["overall"]["answers"] is None
    result = invoke(runner_app, tmp_path / "run", "--answer-field", "anwser")  # a typo is not "no answers"
    assert result.exit_code == 2 and "--answer-field anwser: no record's row has this field" in result.output
    assert "answer" in result.output and "question" in result.output


def test_text_output_has_the_tables(tmp_path, runner_app):
    make_run(tmp_path / "run", n=6)
    result = invoke(runner_app, tmp_path / "run")
    assert result.exit_code == 0, result.output
    for title in ("Records", "Length", "Mixture diagnostics", "Log-probabilities", "Integrity", "alpha histogram",
                  "KL(q||pi_theta)", "mean log w per token", "integrity: clean"):
        assert title in result.stdout, title


def test_plot_without_matplotlib_names_the_extra(tmp_path, runner_app, monkeypatch):
    make_run(tmp_path / "run", n=4)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    result = invoke(runner_app, tmp_path / "run", "--plot", tmp_path / "p.png")
    assert result.exit_code == 1
    assert "pip install -e '.[plot]'" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "p.png").exists()


def test_plot_writes_png(tmp_path, runner_app):
    pytest.importorskip("matplotlib")
    make_run(tmp_path / "run", n=6)
    out = tmp_path / "plots" / "summary.png"
    result = invoke(runner_app, tmp_path / "run", "--plot", out, "--by", "alpha_method")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# Answer extraction


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{a{b{c}}d} and more", "a{b{c}}d"),
    ("good \\boxed{7} then torn \\boxed{8", "7"),  # the last one is unbalanced
    ("\\boxed {x}", "x"),
    ("The answer is 1,234 apples.", "1,234"),
    ("pay $3.50 now, then 2", "2"),
    ("it is -17", "-17"),
    ("no digits here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert A.extract_answer(text) == expected


@pytest.mark.parametrize("pred,ref,ok", [
    ("1,234", "1234", True),
    (" 12.0 ", "12", True),
    ("12.50", "12.5", True),
    ("$5$", "5", True),
    ("5.", "5", True),
    ("0.5", ".5", True),
    ("x  +  1", "x + 1", True),
    ("\\frac{1}{2}", "\\frac{1}{2}", True),
    ("12", "13", False),
    ("1,234", "1.234", False),
    (None, "1", False),
])
def test_answers_match(pred, ref, ok):
    assert A.answers_match(pred, ref) is ok


@pytest.mark.parametrize("completion,reference,ok", [
    ("... \\boxed{72}", "Natalia sold 48/2 = 24 clips.\n#### 72", True),  # GSM8K style
    ("... so 1,000", 1000, True),
    ("... so 3", 3.0, True),
    ("\\boxed{\\frac{3}{4}}", "We get $\\boxed{\\frac{3}{4}}$.", True),  # MATH style solution
    ("\\boxed{5}", "", None),
    ("\\boxed{5}", None, None),
])
def test_completion_matches(completion, reference, ok):
    assert A.completion_matches(completion, reference) is ok


# --------------------------------------------------------------------------------------------------
# End to end: records written by `os-sample generate` on the tiny models


def test_inspect_on_generate_output(tmp_path, tiny_models):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared machine: more threads only contend
    try:
        _generate_then_inspect(tmp_path, tiny_models)
    finally:
        torch.set_num_threads(threads)


def _generate_then_inspect(tmp_path, tiny_models):
    import yaml

    from os_cli.cli import _register, app

    if not any(c.name == "inspect" for c in app.registered_commands):
        _register()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(
        json.dumps({"question": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3), "level": "ab"[i % 2]}) + "\n"
        for i in range(6)))
    recipe = {
        "description": "inspect e2e",
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"], "device": "cpu"},
        "sampling": {"max_new_tokens": 8, "batch_size": 4, "seed": 0},
        "dataset": {"source": str(data)},
        "prompts": {"theta": {"template": "Question: {question}"},
                    "teacher": {"template": "Question: {question} Hint: {answer}"}},
        "output": {"per_token": True, "shard_size": 4},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "--config", str(tmp_path / "r.yaml"), "--output", str(out)])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["inspect", str(out), "--json", "--by", "level"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    recs = read_shards(out)
    o = s["overall"]
    assert o["records"] == len(recs) == 6 and len(s["shards"]) == 2
    assert s["integrity"]["clean"] and s["integrity"]["planned"] == 6 and s["integrity"]["status"] == "complete"
    assert o["tokens"]["total"] == sum(r["num_tokens"] for r in recs)
    lw = sum(r["logprob"]["theta"] - r["logprob"]["q"] for r in recs)
    assert o["log_weight"]["mean_per_token"] == pytest.approx(lw / o["tokens"]["total"])
    assert o["log_weight"]["per_token"]["mean"] == pytest.approx(lw / o["tokens"]["total"], abs=1e-4)
    alphas = [a for r in recs for a in r["tokens"]["alpha"]]
    assert o["diagnostics"]["alpha"]["per_token"]["mean"] == pytest.approx(np.mean(alphas))
    assert o["answers"]["with_reference"] == 6
    assert o["answers"]["correct"] == sum(
        A.answers_match(A.extract_answer(r["completion"]), r["row"]["answer"]) for r in recs)
    assert {k: g["records"] for k, g in s["groups"].items()} == {"a": 3, "b": 3}
    assert runner.invoke(app, ["inspect", str(out)], env={"COLUMNS": "200"}).exit_code == 0
