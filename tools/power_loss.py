"""Build the power-loss shim (``tools/power_loss.c``) as a shared library, to LD_PRELOAD into redis-server.

A SIGKILL leaves the kernel's page cache behind, so it only shows a process crash. With the shim
preloaded, redis-server keeps what it writes to its append-only file in its own memory until it
fsyncs, so killing it also loses what an OS crash or a power cut would (``tests/service/test_crash.py``).

    python -m tools.power_loss [--out DIR]    # prints the library's path
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("power_loss.c")


def build(out_dir: Path) -> Path:
    """Compile the shim into ``out_dir/power_loss.so``; raises FileNotFoundError without gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc is needed to build the power-loss shim")
    library = Path(out_dir) / "power_loss.so"
    command = [gcc, "-shared", "-fPIC", "-O2", "-o", str(library), str(SOURCE), "-ldl", "-pthread"]
    subprocess.run(command, check=True)
    return library


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("var"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(build(args.out))


if __name__ == "__main__":
    main()
