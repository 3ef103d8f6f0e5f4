"""Which waiting row the refill loop (scheduler.py) admits next, from a bounded window of its input.

"longest_first" (default): the loop reads up to `lookahead` requests ahead of the rows in flight
(the iterator may be an endless stream, so never all of it) and admits the row with the largest
token cap first (its `max_new_tokens`, else the run's), ties by input order. That is the
longest-processing-time-first rule for makespan: on a long-tailed workload the last rows to end
are short ones, so the batch does not drain around a few long rows. With equal caps (one
max_new_tokens for the whole run) it is input order, except that among rows of the largest cap a
row with the prompt admitted last (`prompt(request)`: another sample of it, or a duplicate) goes
first, so one prefill serves them (engine/prefix.py keeps the prompt admitted last). The cap comes
first: pulling a prompt's shorter samples ahead of longer rows saved their prefills but cost slot
occupancy (0.92 to 0.89 on benchmarks/bench_refill.py's workload, which repeats prompts with
different caps), so samples with different caps may be prefilled again. "input_order": rows are
read one at a time and admitted as they come. A row's output depends on neither (its draws are keyed per row).

Rows sent back (an eviction below a lowered limit, an OOM back-off) wait again at their input
position. Pure bookkeeping: no torch, no models.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, Iterator, TypeVar

ADMISSIONS = ("longest_first", "input_order")
LOOKAHEAD_PER_SLOT = 4  # default window: this many waiting rows per in-flight slot

R = TypeVar("R")  # a request (the scheduler's RowRequest)


def check(admission: str, lookahead: int | None) -> None:
    if admission not in ADMISSIONS:
        raise ValueError(f"admission must be one of {', '.join(ADMISSIONS)}, got {admission!r}")
    if lookahead is not None and (isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 1):
        raise ValueError(f"lookahead must be a positive integer (rows read ahead), got {lookahead!r}")


class Waiting(Generic[R]):
    """Rows read but not in flight, as (input position, request); `take()` picks by the policy.

    `cap(request)` is the row's token cap; `accept(request)` checks (and returns) a request as it
    is read; `prompt(request)`, when given, a hashable key of its prompt. Holds at most `lookahead`
    rows read ahead (plus rows sent back)."""

    def __init__(
        self,
        source: Iterator[R],
        admission: str,
        lookahead: int,
        cap: Callable[[R], int],
        accept: Callable[[R], R],
        prompt: Callable[[R], Hashable] | None = None,
    ):
        self.source, self.cap, self.accept, self.prompt = source, cap, accept, prompt
        self.last_prompt: Hashable | None = None  # the prompt of the row taken last
        self._prompts: dict[int, Hashable] = {}  # input position -> prompt key, computed once per row
        self.longest_first = admission == "longest_first"
        self.window = lookahead if self.longest_first else 1
        self.rows: list[tuple[int, R]] = []
        self.read = 0  # requests taken from the source
        self.exhausted = False

    def __bool__(self) -> bool:
        return bool(self.rows)

    def _fill(self) -> None:
        while len(self.rows) < self.window and not self.exhausted:
            request = next(self.source, None)
            if request is None:
                self.exhausted = True
            else:
                self.rows.append((self.read, self.accept(request)))
                self.read += 1

    def take(self) -> tuple[int, R] | None:
        """The next row to admit, (input position, request), or None when none is left (for now)."""
        self._fill()
        if not self.rows:
            return None
        if self.longest_first:
            caps = [self.cap(request) for _, request in self.rows]
            top = max(caps)
            longest = [i for i, cap in enumerate(caps) if cap == top]
            if self.prompt is not None and self.last_prompt is not None:
                longest = [i for i in longest if self._prompt_of(i) == self.last_prompt] or longest
            pick = min(longest, key=lambda i: self.rows[i][0])
            if self.prompt is not None:
                self.last_prompt = self._prompt_of(pick)
                del self._prompts[self.rows[pick][0]]  # only rows waiting keep one (the source may be endless)
        else:
            pick = min(range(len(self.rows)), key=lambda i: self.rows[i][0])
        return self.rows.pop(pick)

    def _prompt_of(self, i: int) -> Hashable:
        assert self.prompt is not None
        position, request = self.rows[i]
        if position not in self._prompts:
            self._prompts[position] = self.prompt(request)
        return self._prompts[position]

    def send_back(self, rows: list[tuple[int, R]]) -> None:
        self.rows += rows

    @property
    def done(self) -> bool:
        """Nothing waits and the source has ended."""
        return self.exhausted and not self.rows
