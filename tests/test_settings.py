"""One settings object down the decode path (engine/settings.py, api/arguments.CallSettings) and one per
run for the records (store/record_format.RecordSettings), instead of long parameter lists relayed
through every layer."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from os_cli.api.rows import RowOutput
from os_cli.engine.settings import DecodeSettings
from os_cli.store.record_format import TOKEN_KEYS, RecordSettings, build_record

PACKAGE = Path(__file__).resolve().parents[1] / "os_cli"
# The public signatures of the usage guide (one parameter per documented argument) and typer commands
# (one parameter per option) may be long; nothing else relays settings through more than 10 parameters.
PUBLIC = {"api/model.py::OptimalSamplingModel.__init__", "api/model.py::OptimalSamplingModel.generate",
          "api/model.py::OptimalSamplingModel.generate_stream"}
MAX_PARAMETERS, MAX_LONG = 10, 2


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _parameters(node: ast.FunctionDef) -> int:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return len([n for n in names if n not in ("self", "cls")])


def _is_typer_command(path: Path, node: ast.FunctionDef) -> bool:
    """A command of the CLI: its parameters are typer options and arguments."""
    defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
    return path.parts[-2] == "cli" and any(ast.unparse(d).startswith("typer.") for d in defaults)


def test_settings_travel_as_objects_not_long_parameter_lists():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, node in _functions(ast.parse(path.read_text())):
            where = f"{path.relative_to(PACKAGE).as_posix()}::{name}"
            if _parameters(node) > MAX_PARAMETERS and where not in PUBLIC and not _is_typer_command(path, node):
                long.append((where, _parameters(node)))
    assert len(long) <= MAX_LONG, f"functions with more than {MAX_PARAMETERS} parameters: {long}"


def test_decode_settings_are_frozen_and_default_to_a_call_that_sets_nothing():
    settings = DecodeSettings(max_new_tokens=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_new_tokens = 5
    assert (settings.eos_ids, settings.stop_fn, settings.draft_tokens, settings.topk, settings.oom_backoff) == (
        (), None, 0, None, False)
    assert settings.config.temperature == 1.0 and settings.admission == "longest_first"


def _output(n: int, k: int) -> RowOutput:
    traces = {name: [0.25] * n for name in TOKEN_KEYS if name != "ids"}
    return RowOutput(index=0, id=0, text="c", token_ids=list(range(n)), finish_reason="eos", traces=traces,
                     topk_ids=[[7] * k] * n if k else None, topk_logprobs={"t": [[-0.5] * k] * n} if k else None)


def test_the_run_settings_decide_what_a_record_holds():
    row = {"row_id": "r", "sample": 1, "prompt": "p", "prompt_t": "pt", "messages": None, "row": {"x": 1}}
    plain = build_record(RecordSettings("fixed"), _output(3, 0), **row)
    assert plain["alpha_method"] == "fixed" and plain["sample"] == 1 and plain["completion"] == "c"
    assert plain["num_tokens"] == 3 and plain["finish_reason"] == "eos" and "tokens" not in plain
    per_token = build_record(RecordSettings("fixed", per_token=True), _output(3, 0), **row)
    assert per_token["tokens"]["ids"] == [0, 1, 2] and set(per_token["tokens"]) == set(TOKEN_KEYS)
    topk = build_record(RecordSettings("fixed", topk_logprobs=2), _output(3, 2), **row)
    assert topk["tokens"]["topk_ids"] == [[7, 7]] * 3 and topk["tokens"]["topk_logprob_t"] == [[-0.5, -0.5]] * 3


def test_a_row_without_the_top_k_the_run_records_is_refused():
    with pytest.raises(ValueError, match="row 'r': the run records top-2 log-probs but the row's output has none"):
        build_record(RecordSettings("fixed", topk_logprobs=2), _output(3, 0), row_id="r", sample=0, prompt="p",
                     prompt_t="p", messages=None, row={})
