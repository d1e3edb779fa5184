"""The real ``pyinfra inventory.py deploy.py`` command line, without a lab: input errors and a missing Multipass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))

FAKE_MULTIPASS = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$1" in list) echo '{"list": []}';; *) echo "this test allows only list" >&2; exit 2;; esac
"""


def run(args, bin_dir: Path, state: Path):
    env = dict(os.environ, PATH=f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return subprocess.run([PYINFRA, "inventory.py", "deploy.py", *args, f"--data=state_dir={state}"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)


def test_bad_settings_end_the_run_with_one_error_before_anything_changes(tmp_path):
    (tmp_path / "multipass").write_text(FAKE_MULTIPASS)
    (tmp_path / "multipass").chmod(0o755)
    result = run(["-y", "--data", "calico_pool_encapsulation=GRE", "--data", "yaobank_node_port=1"], tmp_path,
                 tmp_path / "state")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid lab settings (2 problem(s))" in output
    assert "calico_pool_encapsulation: 'GRE' is not valid" in output
    assert "yaobank_node_port: 1 is not valid" in output
    assert "Traceback" not in output
    assert set((tmp_path / "calls").read_text().split("\n")) <= {"list --format json", ""}
    assert not (tmp_path / "state").exists()


def test_missing_multipass_is_named_with_the_fix(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run(["-y"], empty, tmp_path / "state")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "multipass not found: install it from" in output and "multipass_bin" in output
    assert not (tmp_path / "state").exists()
