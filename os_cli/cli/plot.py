"""`os-sample inspect --plot FILE.png`: alpha and length histograms, alpha and ESS ratio by token position."""

from __future__ import annotations

from pathlib import Path

from os_cli.errors import UserError
from os_cli.report.summary import summary_groups

PLOT_HINT = "pip install -e '.[plot]'"  # from a source checkout, as the README says


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(
            f"--plot needs matplotlib, which is not installed; install it with: {PLOT_HINT}", exit_code=1
        ) from None


def write_plot(summary: dict, path: Path) -> None:
    """Four panels: alpha histogram, alpha by position, ESS ratio by position, length histogram."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(name or "all", g) for name, g in summary_groups(summary)]
    if summary.get("groups"):
        series = series[1:]  # one line per group; "all" would repeat them
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax_alpha, ax_alpha_pos, ax_ess_pos, ax_len = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]

    def hist(ax, pick, title, xlabel):
        drawn = False
        for name, g in series:
            dist = pick(g)
            if dist and dist.get("histogram"):
                h = dist["histogram"]
                ax.stairs(h["counts"], h["edges"], label=name, fill=len(series) == 1, alpha=0.8)
                drawn = True
        _finish(ax, title, xlabel, "records", drawn)

    def by_position(ax, key, title):
        drawn = False
        for name, g in series:
            pos = (g.get("by_position") or {}).get(key)
            if pos:
                xs = [i for i, v in enumerate(pos["mean"]) if v is not None]
                ax.plot(xs, [pos["mean"][i] for i in xs], label=name, lw=1.2)
                drawn = True
        _finish(
            ax,
            title,
            "token position",
            "mean",
            drawn,
            empty=f"no per-token {key} in the records\n(records carry `tokens` with output.per_token: true)",
        )

    hist(ax_alpha, lambda g: g["diagnostics"]["alpha"]["per_record"], "alpha (record means)", "alpha")
    by_position(ax_alpha_pos, "alpha", "alpha by token position")
    by_position(ax_ess_pos, "ess_ratio", "ESS ratio by token position")
    hist(ax_len, lambda g: g["tokens"]["distribution"], "length (generated tokens)", "tokens")
    fig.suptitle(f"os-sample inspect: {summary['dir']}" + (f"  (by {summary['by']})" if summary.get("by") else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise UserError(f"--plot {path}: cannot write the file ({exc})", exit_code=1) from None
    finally:
        plt.close(fig)


def _finish(ax, title: str, xlabel: str, ylabel: str, drawn: bool, empty: str = "no data") -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if drawn:
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="gray")
