"""One settings object down the decode path (engine/settings.py, api/arguments.CallSettings) and one per
run for the records (store/record_format.RecordSettings), instead of long parameter lists relayed
through every layer. The parameter count itself is in tests/test_architecture.py."""

from __future__ import annotations

import dataclasses

import pytest

from os_cli.api.rows import RowOutput
from os_cli.engine.settings import DecodeSettings
from os_cli.store.record_format import TOKEN_KEYS, RecordSettings, build_record

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
