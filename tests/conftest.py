"""Shared fixtures. Heavy tools are located once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from calicolab.model import load_defaults, load_lab

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE = PROJECT_ROOT / ".cache"


@pytest.fixture
def defaults():
    return load_defaults(PROJECT_ROOT)


@pytest.fixture
def lab(defaults):
    return load_lab(defaults, PROJECT_ROOT)


def _cloud_init_tree() -> Path:
    """Debian's cloud-init package unpacked (not installed): its schema command runs from there."""
    configured = os.environ.get("CALICOLAB_CLOUDINIT_ROOT")
    if configured:
        return Path(configured)
    root = CACHE / "cloud-init"
    package = root / "usr/lib/python3/dist-packages/cloudinit"
    if not package.exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "cloud-init"], cwd=CACHE, check=True, capture_output=True)
        deb = sorted(CACHE.glob("cloud-init_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


@pytest.fixture(scope="session")
def cloud_init_schema():
    """Run ``cloud-init schema --config-file PATH``; returns (exit code, output)."""
    tree = _cloud_init_tree() / "usr/lib/python3/dist-packages"
    env = dict(os.environ, PYTHONPATH=str(tree))

    def run(path: Path) -> tuple[int, str]:
        result = subprocess.run(
            [sys.executable, "-m", "cloudinit.cmd.main", "schema", "--config-file", str(path)],
            env=env, capture_output=True, text=True, timeout=60,
        )
        return result.returncode, result.stdout + result.stderr

    return run


# The lab files run longest (test_lab_e2e.py alone takes about 7 minutes). pytest-xdist hands out
# whole files (--dist loadfile) in collection order, so starting the long ones first keeps one of
# them from beginning last, after the short files, and adding its minutes to the suite's.
LONGEST_FIRST = ("test_lab_e2e.py", "test_lab_rebuild_e2e.py", "test_lab_faults_e2e.py", "test_lab_workstation.py", "test_lab_verify.py",
                 "test_pool_changes.py", "test_install.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file and among the other files is kept
