"""The dead-code scan finds nothing, and its allow-list holds only names it would otherwise report."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ["calicolab", "tasks", "deploy.py", "teardown.py", "inventory.py"]
ALLOW_LIST = ROOT / "vulture_allowlist.py"

pytestmark = pytest.mark.timeout(120)


def vulture(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vulture", "--min-confidence", "80", *paths],
                          cwd=ROOT, capture_output=True, text=True)


def test_no_dead_code():
    result = vulture(*SCANNED, ALLOW_LIST.name)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def test_every_allowed_name_is_one_the_scan_reports():
    allowed = [node.value.id for node in ast.parse(ALLOW_LIST.read_text()).body
               if isinstance(node, ast.Expr) and isinstance(node.value, ast.Name)]
    findings = vulture(*SCANNED).stdout
    stale = [name for name in allowed if f"'{name}'" not in findings]
    assert not stale, f"{stale} in {ALLOW_LIST.name} are not reported without it: remove them"
