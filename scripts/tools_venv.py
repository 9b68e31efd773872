"""Create ``VENV`` with the tools that must not share the project's environment: checkov (the
policy scanner of deploy/k8s, tests/test_kubernetes.py), whose pinned dependencies (packaging,
importlib-metadata) conflict with the project's. Usage: ``python scripts/tools_venv.py VENV``."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

TOOLS = ("checkov==3.3.30",)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/tools_venv.py VENV", file=sys.stderr)
        return 2
    target = Path(argv[0])
    venv.create(target, with_pip=True, clear=False)
    python = target / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TOOLS], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
