"""Stop strings: when a row's text has reached one, and its text cut just before it.

Pure text logic over a tokenizer's `decode`; no models. The decode loop asks `stop_checker`'s
function after each token (it decodes only the last few tokens, so the check costs the same
at any length); the API cuts the finished row's text with `cut_at_stop`.
"""

from __future__ import annotations

from typing import Callable, Sequence


def stop_checker(decode: Callable[..., str], stop: Sequence[str]) -> Callable[[object, list[int]], bool]:
    """(row, token ids so far) -> whether the text now contains one of `stop` (special tokens skipped)."""
    window = max(len(s) for s in stop) + 2  # a token is at least one character

    def reached(row, ids: list[int]) -> bool:
        tail = decode(ids[-window:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    return reached


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string in it; all of it when none occurs."""
    return text[: min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))]
