"""Chat datasets: a row's conversation column as the prefix a model continues (`prompts.*.messages_field`).

Pure (no tokenizer here; data.py renders the result with the tokenizer's chat template):

- `conversation(value)`: the row's value as a list of `{"role", "content"}` turns. Accepted: a list of
  objects with `role` and `content` (UltraChat, TRL's conversational format), or ShareGPT-style
  `from` / `value` (OpenHermes: human -> user, gpt -> assistant). Roles: system, user, assistant,
  tool; content must be text. Other keys of a turn are dropped. Anything else raises
  `BadConversation` saying what is wrong and where (turn numbers are 0-based).
- `prompt_turns(turns, system, extra)`: the prefix for generation. A final assistant turn is the
  dataset's reference reply: it is dropped (the model writes its own), and the rest must then end
  with a user (or tool) turn. `system` (prompts.*.system) is added as a first system turn, or after
  the conversation's own system text, separated by a blank line. `extra` (the section's filled
  `template`, e.g. a hint only the teacher sees) is appended to the last user turn after a blank line.
"""

from __future__ import annotations

import json
from typing import Any

from os_cli.errors import kind_of

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function_response": "tool",
}
SEPARATOR = "\n\n"


class BadConversation(ValueError):
    """A conversation value that is not a usable list of {role, content} turns."""


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def conversation(value: Any) -> list[dict]:
    """The turns of a conversation value, each `{"role": str, "content": str}`; raises BadConversation."""
    if not isinstance(value, (list, tuple)):
        hint = " (a JSON text? the column must hold the list itself)" if isinstance(value, str) else ""
        raise BadConversation(f"is {kind_of(value)}, not a list of {{role, content}} turns{hint}")
    if not value:
        raise BadConversation("is an empty list (a conversation needs at least one user turn)")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise BadConversation(f"turn {i} is {kind_of(turn)} {_short(turn)}, not a {{role, content}} object")
        if turn.get("role") is None and turn.get("content") is None and ("from" in turn or "value" in turn):
            source = turn.get("from")
            role = SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
            if role is None:
                raise BadConversation(f"turn {i} has from {_short(source)}; allowed: {', '.join(SHAREGPT_ROLES)}")
            content = turn.get("value")
        else:
            role, content = turn.get("role"), turn.get("content")
            if "role" not in turn or "content" not in turn:
                missing = "role" if "role" not in turn else "content"
                raise BadConversation(
                    f"turn {i} has no {missing!r} (keys: {', '.join(map(str, turn)) or 'none'}); "
                    f"a turn is {{role, content}}"
                )
            if role not in ROLES:
                raise BadConversation(f"turn {i} has role {_short(role)}; allowed: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise BadConversation(f"turn {i} ({role}) has content {kind_of(content)} {_short(content)}, not text")
        turns.append({"role": role, "content": content})
    return turns


def prompt_turns(turns: list[dict], system: str | None = None, extra: str | None = None) -> list[dict]:
    """The conversation prefix to generate from (see the module doc); raises BadConversation."""
    turns = [dict(t) for t in turns]
    if turns[-1]["role"] == "assistant":
        turns.pop()  # the dataset's reference reply
    if not turns or turns[-1]["role"] not in ("user", "tool"):
        ends = turns[-1]["role"] if turns else "nothing"
        raise BadConversation(
            f"must end with a user turn once a final assistant turn (the reference reply) is "
            f"dropped; it ends with {ends}"
        )
    if system:
        if turns[0]["role"] == "system":
            turns[0]["content"] = turns[0]["content"] + SEPARATOR + system
        else:
            turns.insert(0, {"role": "system", "content": system})
    if extra:
        users = [i for i, t in enumerate(turns) if t["role"] == "user"]
        if not users:
            raise BadConversation("has no user turn to append the template to")
        turns[users[-1]]["content"] = turns[users[-1]]["content"] + SEPARATOR + extra
    return turns
