"""``tools.warm_bytecode`` imports every module of the project, so none is left to compile per process."""

from __future__ import annotations

from pathlib import Path

from tools.warm_bytecode import PACKAGES, project_modules

ROOT = Path(__file__).resolve().parents[1]


def test_it_lists_every_module_file_of_the_packages_but_no_main() -> None:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if p.name != "__main__.py"]
    expected = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in files}
    assert set(project_modules()) == expected
    assert len(project_modules()) == len(expected)  # each once
