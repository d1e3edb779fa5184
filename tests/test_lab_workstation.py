"""The workstation fails after the preflight passed: the Multipass daemon stops answering mid-run.

The real ``pyinfra`` CLI in the namespace lab, stdin closed: the run ends with the daemon's message
for each host and pyinfra's one-line error, never a traceback or a prompt, with ``-y`` and ``--dry``.
"""

from __future__ import annotations

import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

from tests.support.netlab.fixtures import netlab_session

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

PROJECT = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


@pytest.mark.parametrize("flags", [["-y"], ["--dry"]], ids=["yes", "dry"])
def test_a_daemon_that_stops_answering_after_the_preflight_ends_the_run_cleanly(flags):
    with netlab_session() as netlab, tempfile.TemporaryDirectory() as state:
        # `multipass version` still answers (the preflight passes); every `list` fails like a dead daemon
        netlab.set_faults({"fail": {"list": "cannot connect to the multipass socket"}})
        argv = [PYINFRA, "inventory.py", "deploy.py", *flags, f"--data=state_dir={Path(state) / 'lab'}"]
        result = subprocess.run(netlab.ws_argv(argv, netlab.ws_env()), cwd=PROJECT, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=240)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output[-3000:]
        for name in ("control", "node1", "node2", "host1"):
            assert f"[{name}]" in output and "the Multipass daemon does not answer: restart it with" in output
        for text in ("Traceback", "Press enter", "continue?", "EOFError"):
            assert text not in output, output[-3000:]
        assert output.rstrip().splitlines()[-1].startswith("--> pyinfra error"), output[-1500:]
        launched = [line for line in (netlab.workdir / "multipass-calls.log").read_text().splitlines()
                    if '"launch"' in line or '"start"' in line]
        assert launched == []
