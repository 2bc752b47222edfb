#!/usr/bin/env python3
"""
One entry point for a fresh checkout: ``python3 dev.py test``, ``python3 dev.py
test-oldest``, ``python3 dev.py lint``, ``python3 dev.py docs`` or ``python3 dev.py demo``.

It needs only Python 3.11+: it makes a virtual environment in ``.venv``,
installs the project with its test dependencies there, and runs the command
inside it, so nothing touches the system's Python.

``test`` runs the suite on the newest releases pip finds.  ``test-oldest``
runs it in ``.venv-oldest`` with every dependency that setup.cfg bounds from
below (``Twisted[tls] >= X``) installed at exactly that lowest version, so
the range setup.cfg declares is the range the suite has passed on: CI runs
both.  ``lint`` runs ruff with the rules in ``ruff.toml``.  ``docs`` runs
pydoctor over smtpproxy/ with warnings as errors, so every docstring is valid
epytext and every L{} link resolves (the HTML lands in build/apidocs).
"""

import configparser
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
OLDEST_VENV = HERE / ".venv-oldest"
RUFF = "ruff == 0.16.9"
PYDOCTOR = "pydoctor == 25.10.1"

_LOWER_BOUND = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*(?P<version>[0-9.]+)")


def lowest_versions(setup_cfg=HERE / "setup.cfg"):
    """
    ``name==X`` for each ``name >= X`` in setup.cfg's install_requires: the
    oldest releases the project claims to work with.
    """
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    requirements = config["options"]["install_requires"].splitlines()
    matches = (_LOWER_BOUND.fullmatch(line.strip()) for line in requirements)
    return [f"{m['name']}=={m['version']}" for m in matches if m]


def ensure_environment(path, extra=()):
    """Create the venv at ``path`` if needed, (re)install the project and ``extra`` into it."""
    python = path / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(path)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"{HERE}[test]", *extra],
        check=True,
    )
    return python


def main(argv):
    usage = f"usage: {argv[0]} test|test-oldest|lint|docs|demo [arguments]"
    if len(argv) < 2:
        sys.exit(usage)
    command, arguments = argv[1], argv[2:]
    if command == "test":
        python = ensure_environment(VENV)
        run = [python, "-m", "pytest", "-q", "tests", *arguments]
    elif command == "test-oldest":
        pins = lowest_versions()
        python = ensure_environment(OLDEST_VENV, pins)
        print("testing on the oldest declared releases: " + " ".join(pins), file=sys.stderr)
        run = [python, "-m", "pytest", "-q", "tests", *arguments]
    elif command == "lint":
        python = ensure_environment(VENV, [RUFF])
        run = [python, "-m", "ruff", "check", "--quiet", *arguments]
    elif command == "docs":
        python = ensure_environment(VENV, [PYDOCTOR])
        run = [python, "-m", "pydoctor", "--quiet", "--warnings-as-errors", "--docformat=epytext",
               "--project-name=smtpproxy", "--html-output=build/apidocs", *arguments, "smtpproxy"]
    elif command == "demo":
        python = ensure_environment(VENV)
        run = [python, "-m", "smtpproxy.demo", *arguments]
    else:
        sys.exit(usage)
    os.chdir(HERE)
    os.execv(run[0], [str(a) for a in run])


if __name__ == "__main__":
    main(sys.argv)
