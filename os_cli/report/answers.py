"""Answer extraction and matching: what `inspect` and `export --correct-only` count as correct.

A completion's answer is its last balanced `\\boxed{...}`, else its last number; a reference is
taken as written (`... #### 42` -> `42`, a solution's `\\boxed{...}` -> its content). Both are
normalised (whitespace, `$`, trailing period, thousands commas, trailing zeros of decimals) and
compared as text, then as numbers (relative tolerance 1e-9). Pure: strings in, strings out.
"""

from __future__ import annotations

import math
import re
from typing import Any

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")
_COMMA_NUMBER = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL = re.compile(r"^[-+]?\d*\.\d+$")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` whose braces balance (nested braces allowed), else None."""
    if not isinstance(text, str):
        return None
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def last_number(text: str) -> str | None:
    if not isinstance(text, str):
        return None
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def extract_answer(completion: str) -> str | None:
    """The completion's final answer: the last balanced `\\boxed{...}`, else the last number."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    return last_number(completion)


def reference_answer(value: Any) -> str | None:
    """A reference answer as a string: numbers as written, `... #### 42` (GSM8K) -> `42`,
    a solution containing `\\boxed{...}` -> its content, else the text itself."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return reference_answer(value[0]) if len(value) == 1 else None
    if not isinstance(value, str):
        return None
    if "####" in value:
        return value.rsplit("####", 1)[1]
    boxed = last_boxed(value)
    return boxed if boxed is not None else value


def normalize_answer(text: str) -> str:
    """Whitespace collapsed, `$`/trailing period stripped, thousands commas and trailing zeros
    of decimals removed: ` 1,234.50 ` -> `1234.5`, `12.0` -> `12`."""
    s = " ".join(str(text).split())
    s = s.strip().strip("$").strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    if s.startswith("\\text{") and s.endswith("}"):
        s = s[len("\\text{") : -1].strip()
    if _COMMA_NUMBER.match(s):
        s = s.replace(",", "")
    if _DECIMAL.match(s):
        s = s.rstrip("0").rstrip(".") or "0"
        if s in ("-", "+"):
            s = "0"
    if s.startswith("+") and len(s) > 1 and s[1].isdigit():
        s = s[1:]
    if s == "-0":
        s = "0"
    return s


def answers_match(predicted: str | None, reference: str | None) -> bool:
    if predicted is None or reference is None:
        return False
    a, b = normalize_answer(predicted), normalize_answer(reference)
    if a == b:
        return True
    try:
        fa, fb = float(a), float(b)
    except ValueError:
        return False
    return math.isfinite(fa) and math.isfinite(fb) and math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)


def completion_matches(completion: str, reference: Any) -> bool | None:
    """True/False, or None when there is no usable reference."""
    ref = reference_answer(reference)
    if ref is None or not ref.strip():
        return None
    return answers_match(extract_answer(completion), ref)
