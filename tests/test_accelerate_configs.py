"""configs/accelerate/: the launch configs parse with accelerate's own loader, say what docs/scaling.md
says, and are not offered as recipe fragments."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def _load(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(CONFIGS / name))


def test_one_machine_several_gpus():
    config = _load("one-machine.yaml")
    assert type(config).__name__ == "ClusterConfig"
    assert str(config.distributed_type).endswith("MULTI_GPU")
    assert config.num_machines == 1 and config.num_processes > 1 and config.machine_rank == 0
    assert config.mixed_precision == "no", "the recipe's models.dtype decides the dtype"


def test_two_machines():
    config = _load("two-machines.yaml")
    assert str(config.distributed_type).endswith("MULTI_GPU")
    assert config.num_machines == 2 and config.num_processes % 2 == 0
    assert config.main_process_ip and config.main_process_port
    assert config.mixed_precision == "no"


@pytest.mark.parametrize("name", ["one-machine.yaml", "two-machines.yaml"])
def test_scaling_page_launches_each_config(name):
    page = (ROOT / "docs" / "scaling.md").read_text()
    assert f"--config_file configs/accelerate/{name}" in page
    assert page.startswith("# Scaling out")
    assert "(docs/scaling.md)" in (ROOT / "README.md").read_text(), "the README links the scaling page"


def test_launch_configs_are_not_recipe_fragments():
    from os_cli.recipe import list_fragments

    fragments = list_fragments()
    assert fragments and not any(f.startswith("accelerate/") for f in fragments)
