"""The workstation fails after the preflight passed: the Multipass daemon stops answering mid-run.

The real ``pyinfra`` CLI in the namespace lab, stdin closed: the run ends with the daemon's message
for each host and pyinfra's one-line error, never a traceback or a prompt, with ``-y`` and ``--dry``.
"""

from __future__ import annotations

import json
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
        calls = [json.loads(line)["argv"] for line in (netlab.workdir / "multipass-calls.log").read_text().splitlines()]
        launched = [argv for argv in calls if argv[0] in ("launch", "start")]
        assert launched == []


def _read_lock(path: Path) -> dict[str, str]:
    try:
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except FileNotFoundError:
        return {}


def test_one_run_at_a_time_and_a_killed_runs_lock_is_taken_over():
    from tests.support.netlab.mirror import Mirror

    with netlab_session() as netlab, tempfile.TemporaryDirectory() as tmp:
        mirror = Mirror(netlab).start()
        try:
            state = Path(tmp) / "lab"
            argv = [PYINFRA, "inventory.py", "deploy.py", *mirror.data_args(), f"--data=state_dir={state}"]

            def run(*flags):
                result = subprocess.run(netlab.ws_argv([*argv, *flags], netlab.ws_env()), cwd=PROJECT,
                                        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=400)
                result.output = result.stdout + result.stderr
                return result

            # the first run's launches take a while, so it still holds the lab while the others try
            netlab.set_faults({"delay": {"launch": 60}})
            with open(Path(tmp) / "first.log", "w") as log:
                first = subprocess.Popen(netlab.ws_argv([*argv, "-y"], netlab.ws_env()), cwd=PROJECT,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                for _ in range(600):
                    holder = _read_lock(state / "run.lock")
                    if holder.get("pid") or first.poll() is not None:
                        break
                    subprocess.run(["sleep", "0.1"])
                assert holder.get("pid"), (Path(tmp) / "first.log").read_text()[-3000:]

                second = run("-y")
                assert second.returncode == 1, second.output[-3000:]
                assert f"calicolab: another calicolab run (pid {holder['pid']}, started {holder['started']})" \
                       " holds the lab" in second.output
                dry = run("--dry")
                assert dry.returncode == 0, dry.output[-3000:]
                said = dry.output.index(f"another calicolab run (pid {holder['pid']}")
                assert said < dry.output.index("--> Connecting to hosts"), "said before the plan"
                assert first.poll() is None, "the first run was still building"
            finally:
                first.kill()  # SIGKILL: no chance to release anything
                first.wait()
            launches = [line for line in (netlab.workdir / "multipass-calls.log").read_text().splitlines()
                        if '"launch"' in line]
            assert len(launches) <= 4, "only the first run launched VMs"

            netlab.set_faults({})
            third = run("-y")
            assert third.returncode == 0, third.output[-4000:]
            assert f"the calicolab run with pid {holder['pid']} (started {holder['started']}) ended without " \
                   "releasing the lab: taking its lock over" in third.output
            page = netlab.exec_in("host1", ["curl", "-fsS", "--max-time", "5", "http://198.19.0.1:30180/"], timeout=30)
            assert "Welcome to YAO Bank" in page.stdout
            assert _read_lock(state / "run.lock") == {}, "a run that ends cleanly leaves the lock empty"
        finally:
            mirror.stop()
