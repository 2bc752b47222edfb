#!/usr/bin/env python3
"""
One entry point for a fresh checkout: ``python3 dev.py test`` or ``python3 dev.py demo``.

It needs only Python 3.11+: it makes a virtual environment in ``.venv``,
installs the project with its test dependencies there, and runs the command
inside it, so nothing touches the system's Python.
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
PYTHON = VENV / "bin" / "python"


def ensure_environment():
    """Create .venv if needed and (re)install the project into it."""
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    subprocess.run(
        [PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"{HERE}[test]"],
        check=True,
    )


def main(argv):
    commands = {
        "test": [PYTHON, "-m", "pytest", "-q", "tests", *argv[2:]],
        "demo": [PYTHON, "-m", "smtpproxy.demo", *argv[2:]],
    }
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(f"usage: {argv[0]} test|demo [arguments]")
    ensure_environment()
    os.chdir(HERE)
    os.execv(commands[argv[1]][0], [str(a) for a in commands[argv[1]]])


if __name__ == "__main__":
    main(sys.argv)
