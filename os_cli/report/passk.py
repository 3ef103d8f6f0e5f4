"""pass@k over several samples per row (pure; `summary` feeds it, `inspect` shows it).

Per row with n samples of which c are correct, the unbiased estimator of Chen et al. (2021),
pass@k = 1 - C(n - c, k) / C(n, k), is the chance that k samples drawn without replacement from
the row's n include a correct one; pass@1 is the row's accuracy c / n and pass@n is 1 if any
sample is correct. Averages are over the rows with at least k samples (rows of an unfinished run
may have fewer). `mean_accuracy` is the mean over rows of c / n (each row weighs the same; the
record-level accuracy of `inspect` weighs each sample the same, equal when all rows have n samples).
"""

from __future__ import annotations

from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for 1 <= k <= n, 0 <= c <= n."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def ks_for(n_max: int) -> list[int]:
    """1, 2, 4, ... below n_max, then n_max itself."""
    ks, k = [], 1
    while k < n_max:
        ks.append(k)
        k *= 2
    return ks + [n_max] if n_max >= 1 else []


class PerRow:
    """Whether each (row, sample) with a reference answer is correct; a duplicated pair counts once."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, bool]] = {}

    def add(self, row_id: str, sample: int, correct: bool) -> None:
        self.rows.setdefault(row_id, {}).setdefault(sample, bool(correct))

    def to_dict(self) -> dict | None:
        """None unless some row has more than one sample."""
        counts = [(len(s), sum(s.values())) for s in self.rows.values()]
        if not counts or max(n for n, _ in counts) < 2:
            return None
        n_max = max(n for n, _ in counts)
        pass_at = {}
        for k in ks_for(n_max):
            values = [pass_at_k(n, c, k) for n, c in counts if n >= k]
            pass_at[str(k)] = {"value": sum(values) / len(values), "rows": len(values)}
        return {
            "rows": len(counts),
            "samples_per_row": {"min": min(n for n, _ in counts), "max": n_max},
            "mean_accuracy": sum(c / n for n, c in counts) / len(counts),
            "pass_at": pass_at,
            "rows_all_correct": sum(c == n for n, c in counts),
            "rows_none_correct": sum(c == 0 for n, c in counts),
        }
