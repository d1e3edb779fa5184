"""The report card (``verify.py``) and the diagnostics bundle (``diagnose.py``, and by itself on failure) with the
real ``pyinfra`` CLI against one namespace test lab. The tests run in order on that lab: build, a passing verify,
then one break after another (each repaired before the next), a failed deploy, a diagnose with a VM down. Root only.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shlex
import stat
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.support.netlab.fixtures import netlab_session
from tests.support.netlab.mirror import Mirror
from tests.test_lab_e2e import PROJECT, PYINFRA, Lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

SWITCHES = "/var/lib/rancher/k3s/server/netlab-controller-switches.json"
HEALTHY = {"calico": "available", "stopped_kubelets": []}
EXPECTED_CHECKS = [
    "control: VM Running", "host1: VM Running",
    "node2: lab and management addresses", "host1: lab names resolve to lab addresses",
    "node1: TCP MSS clamp 1300", "control: vsftpd answers on port 21", "node2: vsftpd answers on port 21",
    "control: k3s active", "node1: k3s-agent active", "node node2: Ready, InternalIP 198.19.0.3",
    "TigeraStatus: all Available, none Degraded", "calico-node running on every node",
    "calico-kube-controllers available", "calico-typha available", "IPPool 198.19.16.0/21 matches the settings",
    "yaobank/customer rolled out (1 replica)", "yaobank/summary rolled out (2 replicas)",
    "host1: YaoBank page on http://198.19.0.1:30180/", "host1: kubectl get nodes as ubuntu",
    "host1: calicoctl get ippools as ubuntu", "host1: BIRD running, 3 peers configured",
]


class CardLab(Lab):
    def run(self, script: str, *args: str, data: dict | None = None, timeout: float = 420):
        overrides = [f"--data=state_dir={self.state_dir}"] + [f"--data={k}={v}" for k, v in (data or {}).items()]
        argv = [PYINFRA, "inventory.py", script, *args, *self.mirror.data_args(), *overrides]
        result = self.netlab.ws_run(argv, env=self.netlab.ws_env(), cwd=str(PROJECT), timeout=timeout)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def switches(self, **values) -> None:
        self.vm("control", f"echo {shlex.quote(json.dumps(values))} > {SWITCHES}")

    def paste(self, hint: str) -> str:
        """Run a printed ``try:`` command like a student would (every hint is a multipass command)."""
        argv = shlex.split(hint)
        assert argv[0] == "multipass", hint
        result = self.netlab.multipass(*argv[1:])
        assert result.returncode == 0, f"{hint}: {result.stderr}"
        return result.stdout

    def wait_for(self, what: str, probe, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.5)


def card(result) -> dict[str, tuple[str, str, str]]:
    """The printed table as ``{check: (PASS|FAIL, observed, hint)}``."""
    rows, last = {}, None
    for line in result.stderr.splitlines():
        match = re.match(r"^(PASS|FAIL)\s{2}(.+?)\s{2,}(.*)$", line)
        if match:
            last = match.group(2).strip()
            rows[last] = (match.group(1), match.group(3).strip(), "")
        elif last and line.strip().startswith("try: "):
            rows[last] = rows[last][:2] + (line.strip()[5:],)
    return rows


def bundle_path(result) -> Path:
    match = re.search(r"Diagnostics bundle \(secrets masked\): (\S+)", result.stdout + result.stderr)
    assert match, "no bundle path printed:\n" + result.stderr[-3000:]
    return Path(match.group(1))


def node_ready(lab: CardLab, name: str) -> str:
    node = lab.kubectl_json("get", "node", name)
    return next(c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready")


@pytest.fixture(scope="module")
def lab():
    with netlab_session() as netlab:
        mirror = Mirror(netlab).start()
        try:
            with tempfile.TemporaryDirectory(prefix="calicolab-state-") as state:
                yield CardLab(netlab, mirror, Path(state) / "lab-state")
        finally:
            mirror.stop()


def test_the_deploy_ends_with_the_report_card_and_every_row_passes(lab):
    result = lab.run("deploy.py", "-y")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = card(result)
    assert [c for c in EXPECTED_CHECKS if c not in rows] == []
    assert {check: row for check, row in rows.items() if row[0] != "PASS"} == {}


def test_verify_passes_every_row_changes_nothing_and_keeps_json_pure(lab):
    result = lab.run("verify.py", "-y", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    totals = json.loads(result.stdout)["results"]["totals"]
    assert totals["success"] == 0 and totals["error"] == 0
    rows = card(result)
    assert len(rows) >= 30 and all(state == "PASS" for state, _, _ in rows.values()), rows
    assert "\x1b[" not in "\n".join(line for line in result.stderr.splitlines() if line.startswith(("PASS", "FAIL")))
    assert rows["node node1: Ready, InternalIP 198.19.0.2"][1] == "Ready=True; InternalIP 198.19.0.2"
    assert "Active" in rows["host1: BIRD running, 3 peers configured"][1], "session state is shown"
    dry = lab.run("verify.py", "--dry")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "FAIL" not in dry.stderr


def failing_verify(lab: CardLab, check: str) -> tuple[str, str]:
    result = lab.run("verify.py", "-y", "--json")
    assert result.returncode != 0
    assert json.loads(result.stdout)["results"]["totals"]["success"] == 0, "a failing check is an error, not a change"
    rows = card(result)
    assert rows[check][0] == "FAIL", rows.get(check)
    assert bundle_path(result).is_dir(), "a failed verify writes a bundle by itself"
    return rows[check][1], rows[check][2]


def passing_verify(lab: CardLab) -> None:
    result = lab.run("verify.py", "-y")
    assert result.returncode == 0, [row for row in card(result).items() if row[1][0] != "PASS"]


def test_stopping_bird_fails_the_bird_row(lab):
    lab.vm("host1", "systemctl stop bird")
    observed, hint = failing_verify(lab, "host1: BIRD running, 3 peers configured")
    assert observed.startswith("bird inactive")
    lab.paste(hint)
    passing_verify(lab)


def test_customer_scaled_to_zero_fails_its_row_and_the_hint_repairs_it(lab):
    lab.vm("control", "k3s kubectl -n yaobank patch deployment customer -p '{\"spec\": {\"replicas\": 0}}'")
    observed, hint = failing_verify(lab, "yaobank/customer rolled out (1 replica)")
    assert observed.startswith("0/0 available")
    assert "scale deployment customer --replicas=1" in hint
    lab.paste(hint)
    lab.wait_for("customer available", lambda: lab.kubectl_json("-n", "yaobank", "get", "deployment", "customer")
                 ["status"].get("availableReplicas") == 1)
    passing_verify(lab)


def switched_break(lab: CardLab, switches: dict, broken, check: str) -> str:
    """Break the running cluster through the fake controllers' switches, verify, undo; the failing row's value."""
    lab.switches(**switches)
    lab.wait_for(f"{switches} to show", broken)
    observed, _ = failing_verify(lab, check)
    lab.switches(**HEALTHY)
    lab.wait_for("nodes Ready again", lambda: all(node_ready(lab, n) == "True" for n in ("control", "node1", "node2")))
    return observed


def test_a_node_not_ready_fails_its_node_row(lab):
    observed = switched_break(lab, {"stopped_kubelets": ["node2"]}, lambda: node_ready(lab, "node2") == "Unknown",
                              "node node2: Ready, InternalIP 198.19.0.3")
    assert observed == "Ready=Unknown: NodeStatusUnknown, Kubelet stopped posting node status.; InternalIP 198.19.0.3"


def test_a_degraded_tigerastatus_fails_its_row(lab):
    def degraded():
        conditions = lab.kubectl_json("get", "tigerastatus", "calico")["status"]["conditions"]
        return any(c["type"] == "Degraded" and c["status"] == "True" for c in conditions)

    observed = switched_break(lab, {"calico": "degraded"}, degraded, "TigeraStatus: all Available, none Degraded")
    assert "calico Degraded: calico-node: pod failed (CrashLoopBackOff)" in observed.split("; ")


def test_a_vm_that_lost_its_lab_address_fails_its_address_row(lab):
    lab.vm("node2", "ip addr del 198.19.0.3/20 dev eth0")
    observed, hint = failing_verify(lab, "node2: lab and management addresses")
    assert "10.255.255.3/24" in observed and observed.endswith("(missing 198.19.0.3/20)")
    assert hint == "multipass exec node2 -- sudo netplan apply"
    lab.paste(hint)
    passing_verify(lab)


def plant_secrets(lab: CardLab) -> list[str]:
    """Known secrets where a careless collector would pick them up: logs, journals, the cluster's own token."""
    key_body = base64.b64encode(secrets.token_bytes(600)).decode()
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(key_body[i:i + 64] for i in range(0, len(key_body), 64)) \
        + "\n-----END RSA PRIVATE KEY-----"
    token = (lab.state_dir / "cluster-token").read_text().strip()
    server_token = lab.vm("control", "cat /var/lib/rancher/k3s/server/token").strip()
    note = f"K3S_TOKEN={token}\nagent joined with token: {server_token}\n{pem}\n"
    lab.vm("control", f"printf '%s' {shlex.quote(note)} >> /var/log/cloud-init-output.log")
    lab.vm("node1", f"printf '%s' {shlex.quote(note)} >> /var/log/fake-systemd/k3s-agent.service.log")
    lab.vm("host1", f"printf '%s' {shlex.quote(note)} >> /var/log/fake-systemd/bird.service.log")
    user = yaml.safe_load((lab.state_dir / "kubeconfig.yaml").read_text())["users"][0]["user"]
    client_key = base64.b64decode(user["client-key-data"]).decode()
    key_lines = [line for line in client_key.splitlines() if line and not line.startswith("-----")]
    return [token, server_token, server_token.split("::")[-1], key_body[:64], key_body[-40:],
            user["client-key-data"], user["client-certificate-data"], *key_lines]


def bundle_files(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_failed_deploy_leaves_a_complete_bundle_without_any_secret(lab):
    planted = plant_secrets(lab)
    lab.switches(calico="degraded")
    result = lab.run("deploy.py", "-y", data={"timeout_calico_available": 5})
    assert result.returncode != 0
    # a failed phase ends the run at its boundary: the last phase's card is never printed as a pass
    assert 'Run stopped at "' in result.stdout + result.stderr
    assert all(verdict != "PASS" for verdict, _, _ in card(result).values())
    path = bundle_path(result)
    assert path.parent == lab.state_dir / "diagnostics"
    files = bundle_files(path)
    for name in ["summary.txt", "settings.json", "run-log.txt", "multipass/list.json", "multipass/info.json",
                 "cluster/nodes.txt", "cluster/pods.txt", "cluster/events.txt", "cluster/tigerastatus.yaml",
                 "cluster/installation.yaml", "cluster/ippools.yaml", "cluster/tigera-operator.log",
                 "rendered/cloud-init/control.yaml", "rendered/k3s/node1-config.yaml",
                 "rendered/manifests/installation.yaml"] + [
                 f"vms/{vm}/{part}" for vm in ("control", "node1", "node2", "host1")
                 for part in ("cloud-init-status.txt", "cloud-init-output.log")] + [
                 "vms/control/journal-k3s.txt", "vms/node2/journal-k3s-agent.txt", "vms/host1/journal-bird.txt"]:
        assert name in files, f"{name} missing from {sorted(files)}"
    summary = files["summary.txt"]
    assert summary.index("Failing checks and failed steps:") < summary.index("Where to look:")
    assert "tigerastatus/calico" in summary.split("Where to look:")[0]
    assert "Degraded" in files["cluster/tigerastatus.yaml"]
    assert "status: done" in files["vms/node1/cloud-init-status.txt"]
    assert "198.19.16.0/21" in files["cluster/ippools.yaml"]
    assert "K3S_TOKEN=***" in files["vms/control/cloud-init-output.log"], "the planted lines were collected, masked"
    leaked = [(name, secret[:12]) for name, text in files.items() for secret in planted if secret in text]
    assert leaked == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.rglob("*")} == {0o600, 0o700}


def test_diagnose_with_a_vm_down_collects_the_rest_and_says_so(lab):
    assert lab.netlab.multipass("stop", "node1").returncode == 0
    result = lab.run("diagnose.py", "-y")
    assert result.returncode == 0, result.stderr[-3000:]
    files = bundle_files(bundle_path(result))
    assert "node1 is Stopped" in files["vms/node1/NOT-COLLECTED.txt"]
    assert "status: done" in files["vms/node2/cloud-init-status.txt"]
    assert "node1: VM Running" in files["report.txt"] and "FAIL" in files["report.txt"]
    assert "Stopped" in files["summary.txt"].split("Where to look:")[0]
    assert lab.instances()["node1"] == "Stopped", "diagnostics never start a VM"
