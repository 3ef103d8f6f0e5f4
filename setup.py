"""Which packages the wheel holds; everything else about the build is in pyproject.toml.

pyproject.toml alone cannot say it: `[tool.setuptools.packages.find]` only finds folders under the
source tree by their own names, and the repository's recipes/ and configs/ ship as os_cli.recipes and
os_cli.configs (pyproject.toml's package-dir maps them; os_cli/recipe/places.py looks there first). So:

- every folder under os_cli/ and optimal_sampling_hf/ whose name is importable is found here
  (code subpackages and data folders such as os_cli/builtin alike): a new subpackage needs no edit;
- recipes/ and configs/ are added with their subfolders (configs/alpha -> os_cli.configs.alpha), so
  every shipped file is data of a listed package and setuptools has nothing to warn about.

tests/test_packaging.py checks the list against the source tree and builds a real wheel.
"""

from __future__ import annotations

from setuptools import find_namespace_packages, setup

CODE = ("os_cli", "optimal_sampling_hf")
MAPPED = {"os_cli.recipes": "recipes", "os_cli.configs": "configs"}  # package -> folder, as in pyproject.toml


def _importable(name: str) -> bool:
    return all(part.isidentifier() and part != "__pycache__" for part in name.split("."))


def package_list(root: str = ".") -> list[str]:
    """The packages of the wheel, found from the folders under `root` (the repository)."""
    found = find_namespace_packages(root, include=[f"{top}{tail}" for top in CODE for tail in ("", ".*")])
    for package, folder in MAPPED.items():
        found += [package] + [f"{package}.{sub}" for sub in find_namespace_packages(f"{root}/{folder}")]
    return sorted(p for p in found if _importable(p))


if __name__ == "__main__":
    setup(packages=package_list())
