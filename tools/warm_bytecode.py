"""Import every module of the project once, so that Python writes the bytecode of what it uses.

``make install`` runs this instead of letting pip byte-compile the ~14,000 modules it installs,
which took about half of the install's time on one core; the project imports ~4,000 of them.
Without .pyc files, and with PYTHONDONTWRITEBYTECODE set (as in our development environment), every process
would compile its imports again. Run it with PYTHONDONTWRITEBYTECODE unset; later runs read the
.pyc files wherever it is set.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

PACKAGES = ("model", "service", "bench", "tools", "tests")
# Imported lazily at run time, not by any module: what torch.compile loads (dynamo, AOT autograd, inductor).
RUNTIME_IMPORTS = ("torch._inductor.compile_fx", "torch._inductor.codegen.cpp")


def project_modules() -> list[str]:
    """Every module of the project's packages, but no ``__main__`` (importing one runs its command)."""
    names = []
    for package in PACKAGES:
        names.append(package)
        path = importlib.import_module(package).__path__
        names += [m.name for m in pkgutil.walk_packages(path, f"{package}.") if not m.name.endswith(".__main__")]
    return names


def main() -> None:
    names = project_modules()
    for name in (*names, *RUNTIME_IMPORTS):
        importlib.import_module(name)
    print(f"imported {len(names)} project modules, {len(sys.modules)} modules in all")


if __name__ == "__main__":
    main()
