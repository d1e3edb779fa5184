"""The Kubernetes operations through the real ``pyinfra`` CLI (gevent-patched process), against the
emulator running as a separate process with its fake controllers, on 127.0.0.1 only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYINFRA = Path(sys.executable).parent / "pyinfra"

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(not PYINFRA.exists(), reason="pyinfra CLI missing")]

DEPLOY = '''
import os
from pathlib import Path
from calicolab.model import load_defaults, load_lab
from calicolab.operations import kubernetes
from calicolab.render import render_manifest

loopback = {"control": "127.0.0.1", "node1": "127.0.0.2", "node2": "127.0.0.3", "host1": "127.0.0.254"}
checkout = Path(os.environ["PYTHONPATH"])  # pyinfra runs this file from its own folder
lab = load_lab(load_defaults(checkout) | {"mgmt_ips": loopback, "state_dir": os.environ["TEST_STATE"],
                                          "k3s_api_port": int(os.environ["TEST_PORT"])}, checkout)

kubernetes.applied(name="YaoBank manifest", manifest="yaobank", manifest_yaml=render_manifest(lab, "yaobank"), lab=lab)
kubernetes.rolled_out(name="YaoBank rolled out", namespace="yaobank", names=["customer", "summary", "database"],
                      timeout=30, lab=lab)
'''


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def served(tmp_path):
    port = free_port()
    state = tmp_path / "state"
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.kubeapi", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--tls-dir", str(tmp_path / "tls"), "--kubeconfig-out", str(state / "kubeconfig.yaml"),
         "--ready-file", str(ready), "--controllers", "tests.support.kubeapi.controllers:start"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "emulator did not start"
        time.sleep(0.05)
    yield port, state
    proc.kill()
    proc.wait(10)


def pyinfra(tmp_path, port, state, *args):
    (tmp_path / "deploy.py").write_text(DEPLOY)
    env = dict(os.environ, TEST_STATE=str(state), TEST_PORT=str(port), PYTHONPATH=str(ROOT), PYINFRA_PROGRESS="off")
    return subprocess.run(
        [str(PYINFRA), *args, "@local", str(tmp_path / "deploy.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
    )


def test_cli_dry_diff_then_apply_then_no_change(tmp_path, served):
    port, state = served
    dry = pyinfra(tmp_path, port, state, "--dry", "--diff")
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout + dry.stderr
    assert "--- live namespace/yaobank (absent: will create)" in out
    assert "will wait for rollout of customer, summary, database -n yaobank" in out

    real = pyinfra(tmp_path, port, state, "-y", "--diff")
    out = real.stdout + real.stderr
    assert real.returncode == 0, out
    assert out.count("--- live deployment.apps/summary -n yaobank") == 1  # once per run
    assert "apply yaobank manifest: 10 created, 0 configured, 0 unchanged" in out
    assert "] Error" not in out

    again = pyinfra(tmp_path, port, state, "-y", "--diff")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert "--- live" not in out
    assert "apply yaobank manifest" not in out  # nothing to execute
