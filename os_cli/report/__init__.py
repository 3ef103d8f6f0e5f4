"""Reading output folders: summaries, statistics, pass@k, answers, trainer-ready exports."""
