"""os-sample inspect (placeholder until its issue lands)."""


def register(app) -> None:
    pass
