"""The test lab's benchmark delays (NetLab.set_delays): off by default, carried to every stand-in that waits.

No test here measures time: each checks that a stand-in sees the delay it is given (and none when off)."""
import json
import sys
import time
import types
from pathlib import Path

import pytest

from tests.support.kubeapi.controllers import FakeCluster, apply_lab_delays, follow_lab_delays
from tests.support.netlab.fixtures import netlab  # noqa: F401  (fixture)
from tests.support.netlab.lab import REALISTIC_DELAYS, VM_DELAYS_PATH, NetLab

sys.path.insert(0, str(Path(__file__).resolve().parent / "support" / "netlab"))
from https_server import download_delay  # noqa: E402

PACKAGES_UD = "#cloud-config\npackages: [curl]\n"


def _cluster() -> FakeCluster:
    return FakeCluster(types.SimpleNamespace(store=None))


def test_delays_are_off_unless_set_and_unknown_ones_are_refused(tmp_path):
    lab = NetLab("cldly", tmp_path)
    assert lab.delays() == {}
    with pytest.raises(ValueError, match="unknown delays \\['lunch'\\]"):
        lab.set_delays({"lunch": 30})
    assert not lab.delays_path.exists()


def test_fake_cluster_takes_pod_and_calico_waits_and_gives_them_back():
    cluster = _cluster()
    defaults = {"rollout_delay": cluster.rollout_delay, "calico_delay": cluster.calico_delay}
    apply_lab_delays(cluster, REALISTIC_DELAYS, defaults)
    assert (cluster.rollout_delay, cluster.calico_delay) == (5.0, 15.0)
    apply_lab_delays(cluster, {}, defaults)
    assert (cluster.rollout_delay, cluster.calico_delay) == (0.0, 0.5)


def test_fake_cluster_follows_the_delays_file_while_running(tmp_path):
    cluster, path = _cluster(), tmp_path / "delays.json"
    stop = follow_lab_delays(cluster, str(path), interval=0.02)
    try:
        path.write_text(json.dumps({"calico_available": 15}))
        deadline = time.monotonic() + 10
        while cluster.calico_delay != 15 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cluster.calico_delay == 15
        path.unlink()
        while cluster.calico_delay != 0.5 and time.monotonic() < deadline + 10:
            time.sleep(0.02)
        assert cluster.calico_delay == 0.5
    finally:
        stop()


def test_mirror_delays_binaries_only(tmp_path):
    delays = tmp_path / "delays.json"
    assert download_delay(str(delays), "/k3s/v1.35.4+k3s1/k3s") == 0  # no file: off
    delays.write_text(json.dumps(REALISTIC_DELAYS))
    assert download_delay(str(delays), "/k3s/v1.35.4+k3s1/k3s") == 5
    assert download_delay(str(delays), "/calicoctl/releases/download/v3.32.1/calicoctl-linux-amd64") == 5
    for small in ("/k3s/install.sh", "/k3s/v1.35.4+k3s1/sha256sum-amd64.txt",
                  "/kubectl/release/v1.35.4/bin/linux/amd64/kubectl.sha256",
                  "/calicoctl/releases/download/v3.32.1/SHA256SUMS"):
        assert download_delay(str(delays), small) == 0, small


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_vms_get_the_delays_at_creation_and_when_they_change(netlab):  # noqa: F811
    netlab.set_delays({"apt": 0.01})
    r = netlab.multipass("launch", "-n", "node1", "--cloud-init", "-", "24.04", input=PACKAGES_UD)
    assert r.returncode == 0, r.stderr
    assert json.loads(netlab.exec_in("node1", ["cat", VM_DELAYS_PATH]).stdout) == {"apt": 0.01}
    log = netlab.exec_in("node1", ["cat", "/var/log/cloud-init-output.log"]).stdout
    assert "package step: waiting 0.01 s" in log
    netlab.set_delays({})
    assert json.loads(netlab.exec_in("node1", ["cat", VM_DELAYS_PATH]).stdout) == {}
