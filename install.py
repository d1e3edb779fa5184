#!/usr/bin/env python3
"""Set calicolab up in this checkout: a virtual environment ``.venv`` with what the deploy needs.

    python3 install.py
    .venv/bin/pyinfra inventory.py deploy.py

It installs wheels only (``--only-binary=:all:``), so no C compiler or Xcode command-line tools are
needed, and it stops with one line when this Python is too old. It is written for old Pythons too
(no syntax newer than 3.6), so that an old one gets that line instead of a syntax error.
"""

import os
import subprocess
import sys

MINIMUM = (3, 11)
CHECKOUT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(CHECKOUT, ".venv")
REQUIREMENTS = os.path.join(CHECKOUT, "requirements.txt")
#: The checkout's packages that every run imports (deploy.py, inventory.py are read by pyinfra itself).
OWN_CODE = ["calicolab", "tasks"]


def python_problem(version_info, executable):
    """One line saying which Python is needed, or None when ``version_info`` is new enough.

    >>> python_problem((3, 9, 6), "/usr/bin/python3")[:39]
    'calicolab needs Python 3.11 or newer; /'
    """
    if tuple(version_info[:2]) >= MINIMUM:
        return None
    return (
        "calicolab needs Python {0}.{1} or newer; {2} is Python {3}.{4}.{5}. Install a newer one "
        "(macOS: `brew install python@3.12`; Ubuntu or WSL: `sudo apt install python3.12-venv`, or "
        "python3.11-venv on Ubuntu 22.04) and run this with it, e.g. `python3.12 install.py`."
    ).format(MINIMUM[0], MINIMUM[1], executable, *tuple(version_info[:3]))


def venv_problem():
    """One line when this Python cannot make a virtual environment (Debian and Ubuntu split it out)."""
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401
    except ImportError:
        return (
            "calicolab: this Python cannot create a virtual environment: install its venv package, e.g. "
            "`sudo apt install python{0}.{1}-venv`, then run install.py again."
        ).format(*sys.version_info[:2])
    return None


def main():
    problem = python_problem(sys.version_info, sys.executable) or venv_problem()
    if problem:
        sys.stderr.write(problem + "\n")
        return 1
    venv_python = os.path.join(VENV, "bin", "python")
    steps = []
    if not os.path.exists(venv_python):
        steps.append([sys.executable, "-m", "venv", VENV])
    steps.append([venv_python, "-m", "pip", "install", "--disable-pip-version-check", "--only-binary=:all:",
                  "-r", REQUIREMENTS])
    # Byte-compile our own code as pip does for installed packages, so no run compiles it again,
    # even where PYTHONDONTWRITEBYTECODE is set (common in containers and CI): about 0.2 s per run.
    steps.append([venv_python, "-m", "compileall", "-q"] + OWN_CODE)
    for argv in steps:
        if subprocess.call(argv, cwd=CHECKOUT) != 0:
            sys.stderr.write("calicolab: `{0}` failed (its message is above); fix that and run "
                             "install.py again.\n".format(" ".join(argv)))
            return 1
    sys.stderr.write("calicolab is installed in {0}. Build the lab from this folder with:\n"
                     "    .venv/bin/pyinfra inventory.py deploy.py\n".format(VENV))
    return 0


if __name__ == "__main__":
    sys.exit(main())
