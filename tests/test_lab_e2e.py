"""End to end: the real ``pyinfra inventory.py deploy.py`` CLI against the namespace test lab.

The workstation side runs in the lab's workstation namespace with the multipass double first in PATH;
downloads come from the lab's mirror through the ``--data`` URL overrides a user with a mirror would
use. The tests run in order on one lab (each step builds on the previous one): dry run from nothing,
build, re-run, a pool change without and with the Calico API server, stopped lab, restarted node. Root only.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.netlab.fixtures import netlab_session
from tests.support.netlab.lab import WS_ADDR
from tests.support.netlab.mirror import Mirror

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

PROJECT = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(__import__("sys").executable).with_name("pyinfra"))
VMS = ("control", "node1", "node2", "host1")
K3S_UPGRADE = "v1.35.5+k3s1"
# multipass commands that change something; a dry run may only list
MUTATING = {"launch", "start", "stop", "restart", "delete", "purge", "exec", "transfer", "recover"}


class Lab:
    """The test lab plus helpers to run the product and look inside the VMs."""

    def __init__(self, netlab, mirror, state_dir: Path):
        self.netlab, self.mirror, self.state_dir = netlab, mirror, state_dir
        self.outputs: list[str] = []

    def deploy(self, *args: str, data: dict | None = None, timeout: float = 420):
        overrides = [f"--data=state_dir={self.state_dir}"] + [f"--data={k}={v}" for k, v in (data or {}).items()]
        argv = [PYINFRA, "inventory.py", "deploy.py", *args, *self.mirror.data_args(), *overrides]
        result = self.netlab.ws_run(
            argv, env=self.netlab.ws_env(), cwd=str(PROJECT), timeout=timeout, stdin=subprocess.DEVNULL
        )
        self.outputs.append(result.stdout + result.stderr)
        return result

    def set_controller_switches(self, switches: dict) -> None:
        """Switch the fake cluster's controllers (e.g. pod faults of a deployment) in the running k3s server."""
        path = "/var/lib/rancher/k3s/server/netlab-controller-switches.json"
        result = self.netlab.exec_in("control", ["sh", "-c", f"cat > {path}.new && mv {path}.new {path}"],
                                     input=json.dumps(switches))
        assert result.returncode == 0, result.stderr

    def multipass_calls(self) -> list[list[str]]:
        log = self.netlab.workdir / "multipass-calls.log"
        return [json.loads(line)["argv"] for line in log.read_text().splitlines()] if log.exists() else []

    def snapshot(self) -> dict:
        """What a dry run must leave alone: instances, local state files, the VMs' files that deploys write."""
        files = {}
        if self.state_dir.exists():
            for path in sorted(self.state_dir.rglob("*")):
                files[str(path)] = (stat.S_IMODE(path.stat().st_mode), path.read_bytes() if path.is_file() else None)
        return {"instances": self.instances(), "state": files, "mirror": len(self.mirror.requests())}

    def instances(self) -> dict[str, str]:
        listing = self.netlab.multipass("list", "--format", "json")
        assert listing.returncode == 0, listing.stderr
        return {i["name"]: i["state"] for i in json.loads(listing.stdout)["list"]}

    def vm(self, name: str, script: str) -> str:
        result = self.netlab.exec_in(name, ["sh", "-c", script], timeout=60)
        assert result.returncode == 0, f"{name}: {script}: {result.stderr}"
        return result.stdout

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.vm("control", "k3s kubectl " + " ".join(args) + " -o json"))


@contextlib.contextmanager
def lab_session(lab_class=Lab, **mirror_options):
    """A fresh test lab with its mirror and a private state folder, torn down afterwards."""
    with netlab_session() as netlab:
        mirror = Mirror(netlab, **mirror_options).start()
        try:
            with tempfile.TemporaryDirectory(prefix="calicolab-state-") as state:
                yield lab_class(netlab, mirror, Path(state) / "lab-state")
        finally:
            mirror.stop()


@pytest.fixture(scope="module")
def lab():
    with lab_session(k3s_versions=("v1.35.4+k3s1", K3S_UPGRADE),
                     kubectl_versions=("v1.35.4", K3S_UPGRADE.split("+")[0])) as lab:
        yield lab


def results_totals(result) -> dict:
    """The Results totals of a ``--json`` run."""
    return json.loads(result.stdout)["results"]["totals"]


def assert_lab_healthy(lab: Lab) -> None:
    assert lab.instances() == {name: "Running" for name in VMS}
    nodes = lab.kubectl_json("get", "nodes")["items"]
    ready = {n["metadata"]["name"]: [c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready"] for n in nodes}
    assert ready == {"control": ["True"], "node1": ["True"], "node2": ["True"]}
    status = lab.kubectl_json("get", "tigerastatus", "calico")["status"]["conditions"]
    assert any(c["type"] == "Available" and c["status"] == "True" for c in status)
    for deployment in ("customer", "summary", "database"):
        out = lab.vm("control", f"k3s kubectl -n yaobank rollout status deployment/{deployment} --timeout=30s")
        assert f'deployment "{deployment}" successfully rolled out' in out
    page = lab.vm("host1", "curl -fsS --max-time 5 http://198.19.0.1:30180/")
    assert "Welcome to YAO Bank" in page


def test_dry_run_from_nothing_lists_everything_and_creates_nothing(lab):
    result = lab.deploy("--dry", "--diff")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for name in VMS:
        assert f"{name} will be launched" in output
    assert "#cloud-config" in output, "the cloud-init of each new VM is shown as a diff"
    assert "will generate the cluster token" in output
    assert "will be applied" in output and "installation.operator.tigera.io/default" in output
    assert lab.instances() == {}
    assert not lab.state_dir.exists()
    assert lab.mirror.requests() == []


def test_the_k3s_server_and_agents_install_together_and_host1_gets_its_tools_meanwhile(lab):
    """Nothing in that step waits for the server: the token is made on the workstation, and an agent
    retries until its server answers. pyinfra runs one step at a time on every host that has it."""
    result = lab.deploy("--dry", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(result.stdout)["plan"]
    steps = {i: set(step["hosts_with_change"]) for i, step in enumerate(plan)}
    install = next(i for i, step in enumerate(plan) if "k3s agent: installed" in " ".join(step["names"]))
    assert {"control", "node1", "node2"} <= steps[install]
    downloads = next(i for i, step in enumerate(plan) if "from the workstation cache" in " ".join(step["names"]))
    assert steps[downloads] == set(VMS)
    api_ready = next(i for i, step in enumerate(plan) if "API ready" in " ".join(step["names"]))
    bird = next(i for i, step in enumerate(plan) if "BIRD running" in " ".join(step["names"]))
    assert downloads < install < api_ready and bird < api_ready, "host1 does not wait for the cluster"
    assert lab.mirror.requests() == []


def mirror_downloads(lab: Lab, since: int = 0) -> list[tuple[str, str]]:
    """(client address, path) of the files the mirror served, from its request log."""
    lines = lab.mirror.requests()[since:]
    return [(line.split()[0], re.search(r'"GET (\S+)', line).group(1)) for line in lines if '"GET ' in line]


def test_deploy_from_nothing_builds_and_verifies_the_lab(lab):
    result = lab.deploy("-y")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_lab_healthy(lab)

    # every file was downloaded once, by the workstation (k3s too, though three VMs run it)
    served = mirror_downloads(lab)
    assert {client for client, _ in served} == {WS_ADDR}
    paths = [path for _, path in served]
    assert sorted(paths) == sorted(set(paths)) and "/k3s/v1.35.4+k3s1/k3s" in paths

    # k3s: pinned version, configured from its file, agents joined with the lab's token
    assert lab.vm("control", "k3s --version").startswith("k3s version v1.35.4+k3s1")
    assert "flannel-backend: \"none\"" in lab.vm("control", "cat /etc/rancher/k3s/config.yaml")
    assert lab.vm("control", "stat -c %a /etc/rancher/k3s/k3s.yaml").strip() == "600"
    # host1: BIRD, tools and a kubeconfig for ubuntu that really reaches the API
    assert "neighbor 198.19.0.3 as 64512;" in lab.vm("host1", "cat /etc/bird/bird.conf")
    assert lab.vm("host1", "stat -c '%a %U' /home/ubuntu/.kube/config").strip() == "600 ubuntu"
    nodes = lab.vm("host1", "kubectl --kubeconfig /home/ubuntu/.kube/config get nodes -o name")
    assert sorted(nodes.split()) == ["node/control", "node/node1", "node/node2"]
    assert "v3.32.1" in lab.vm("host1", "calicoctl version")
    # local state: private folder and files; the token never shows in the output
    assert stat.S_IMODE(lab.state_dir.stat().st_mode) == 0o700
    token = (lab.state_dir / "cluster-token").read_text().strip()
    for name in ("cluster-token", "kubeconfig.yaml"):
        assert stat.S_IMODE((lab.state_dir / name).stat().st_mode) == 0o600
    assert token and token not in "\n".join(lab.outputs)
    # the static addresses came from the product's own cloud-init network script, matched by MAC
    addresses = lab.vm("node2", "ip -4 -o addr show dev eth0")
    assert "198.19.0.3/20" in addresses and "10.255.255.3/24" in addresses


def exec_calls_per_vm(calls: list[list[str]]) -> collections.Counter:
    """``multipass exec [OPTIONS] NAME -- ...`` calls per instance."""
    per_vm = collections.Counter()
    for argv in calls:
        if argv[:1] == ["exec"]:
            per_vm[next(a for a in argv[1:] if not a.startswith("-"))] += 1
    return per_vm


def test_rerun_reports_no_change_on_every_host(lab):
    before = len(lab.multipass_calls())
    result = lab.deploy("-y", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    totals = results_totals(result)
    changed = [(op["name"], op["success"]) for op in json.loads(result.stdout)["results"]["operations"] if op["success"]]
    assert totals["success"] == 0 and totals["error"] == 0, changed
    assert totals["no_change"] > 0
    # a converged lab costs one read per VM while planning, which also takes the report card's look
    # inside it (it stands: every row passed and nothing changed), not a round trip per operation
    calls = lab.multipass_calls()[before:]
    assert exec_calls_per_vm(calls) == {"control": 1, "node1": 1, "node2": 1, "host1": 1}, calls
    assert [argv[0] for argv in calls].count("launch") == 0
    assert [argv[0] for argv in calls].count("list") == 1, "the VM list taken while connecting stands too"
    card = plain(result)
    assert "PASS    host1: YaoBank page" in card and "PASS    node2: k3s-agent active" in card
    assert "FAIL" not in card


MSS_RULE = "POSTROUTING -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1300"


def test_a_failing_row_read_while_planning_is_looked_at_again_at_the_end(lab):
    """The report card takes a VM's rows from the deploy's read of it only when all of them passed: the
    VM with a failing row (its MSS clamp gone, which the deploy does not manage) is probed again."""
    lab.vm("host1", f"iptables -t mangle -D {MSS_RULE}")
    try:
        before = len(lab.multipass_calls())
        result = lab.deploy("-y")
        calls = lab.multipass_calls()[before:]
    finally:
        lab.vm("host1", f"iptables -t mangle -C {MSS_RULE} || iptables -t mangle -A {MSS_RULE}")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"FAIL\s+host1: TCP MSS clamp 1300\s+absent", plain(result)), plain(result)[-3000:]
    assert exec_calls_per_vm(probes_again(calls)) == {"host1": 1}, calls


def probes_again(calls: list[list[str]]) -> list[list[str]]:
    """The report card's probes run on their own, not with the deploy's first read of the VM."""
    return [argv for argv in calls if "### calicolab:mss" in argv[-1] and "### first-boot" not in argv[-1]]


def test_a_changed_file_and_a_stopped_service_are_put_back_and_restarted(lab):
    conf = lab.vm("host1", "cat /etc/bird/bird.conf")
    lab.vm("host1", "echo '# edited by hand' >> /etc/bird/bird.conf && chmod 0600 /etc/bird/bird.conf")
    lab.vm("node2", "systemctl stop k3s-agent")
    # a binary changed in place: its size and time no longer those its install recorded, so it is hashed
    calicoctl = lab.vm("host1", "sha256sum /usr/local/bin/calicoctl").split()[0]
    lab.vm("host1", "echo '# changed by hand' >> /usr/local/bin/calicoctl")
    dry = lab.deploy("--dry", "--diff")
    assert dry.returncode == 0, dry.stderr[-3000:]
    shown = plain(dry)
    assert "# edited by hand" in shown, "the diff shows the line that goes"
    assert "k3s-agent running" in shown
    before = len(lab.multipass_calls())
    fixed = lab.deploy("-y", "--json")
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    # the run changed something, so the report card looks into every VM again, node1 included
    assert exec_calls_per_vm(probes_again(lab.multipass_calls()[before:])) == {"control": 1, "node1": 1, "node2": 1,
                                                                              "host1": 1}
    changed = {name for op in json.loads(fixed.stdout)["results"]["operations"] if op["success"] for name in op["names"]}
    assert {"host1: BIRD configuration and shell profile", "host1: restart BIRD (configuration changed)",
            "k3s agent: k3s-agent running", "host1: kubectl and calicoctl from the workstation cache"} <= changed, changed
    assert lab.vm("host1", "sha256sum /usr/local/bin/calicoctl").split()[0] == calicoctl
    assert lab.vm("host1", "cat /etc/bird/bird.conf") == conf
    assert lab.vm("host1", "stat -c %a /etc/bird/bird.conf").strip() == "644"
    assert lab.vm("node2", "systemctl is-active k3s-agent").strip() == "active"
    assert_lab_healthy(lab)


def plain(result) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)


def test_a_changed_secret_file_is_named_by_the_diff_never_shown(lab):
    lab.vm("node1", "echo stale-token-value > /etc/rancher/k3s/calicolab-token")
    lab.vm("host1", "echo 'stale: kubeconfig-value' > /home/ubuntu/.kube/config")
    dry = lab.deploy("--dry", "--diff")
    assert dry.returncode == 0, dry.stderr[-3000:]
    shown = plain(dry)
    assert "/etc/rancher/k3s/calicolab-token (content is secret, not shown)" in shown
    assert "/home/ubuntu/.kube/config (content is secret, not shown)" in shown
    assert "stale-token-value" not in shown and "kubeconfig-value" not in shown
    fixed = lab.deploy("-y")
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    token = (lab.state_dir / "cluster-token").read_text()
    assert lab.vm("node1", "cat /etc/rancher/k3s/calicolab-token") == token
    assert_lab_healthy(lab)


def ippool(lab: Lab) -> dict:
    return lab.kubectl_json("get", "ippools.crd.projectcalico.org", "default-ipv4-ippool")["spec"]


def tigerastatus(lab: Lab, name: str) -> dict[str, str]:
    return {c["type"]: c["status"] for c in lab.kubectl_json("get", "tigerastatus", name)["status"]["conditions"]}


def test_dry_diff_of_a_pool_change_shows_exactly_that_field_and_why_it_cannot_be_applied(lab):
    before = lab.kubectl_json("get", "installation", "default")
    result = lab.deploy("--dry", "--diff", data={"calico_pool_nat_outgoing": "Disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    output = plain(result)
    changed = [re.sub(r"\s+", " ", line.strip()) for line in output.splitlines()
               if re.match(r"\s*[-+]\s", line) and not re.match(r"\s*(---|\+\+\+)", line)]
    assert changed == ["- natOutgoing: Enabled", "+ natOutgoing: Disabled"], changed
    assert "the operator cannot apply this change: IPPool default-ipv4-ippool (198.19.16.0/21): natOutgoing true -> false" in output
    assert "--data calico_apiserver=Enabled" in output and "`pyinfra inventory.py teardown.py`, then deploy" in output
    after = lab.kubectl_json("get", "installation", "default")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["calicoNetwork"]["ipPools"][0]["natOutgoing"] == "Enabled"


def test_without_the_api_server_the_real_run_stops_at_the_pool_change_and_changes_nothing(lab):
    before = lab.kubectl_json("get", "installation", "default")["metadata"]["resourceVersion"]
    result = lab.deploy("-y", data={"calico_pool_nat_outgoing": "Disabled"})
    output = plain(result)
    assert result.returncode != 0
    assert "apply installation manifest failed on control: Installation ipPools: the operator cannot apply" in output
    assert "--data calico_apiserver=Enabled" in output and "teardown.py" in output
    assert lab.kubectl_json("get", "installation", "default")["metadata"]["resourceVersion"] == before
    assert ippool(lab)["natOutgoing"] is True
    assert tigerastatus(lab, "ippools") == {"Available": "True", "Progressing": "False", "Degraded": "False"}


def test_a_block_size_change_is_refused_against_the_live_pool_before_anything_runs(lab):
    before = lab.snapshot()
    result = lab.deploy("--dry", data={"calico_pool_block_size": 24})
    assert result.returncode != 0
    assert "calico_pool_block_size: 24 differs from the live IPPool default-ipv4-ippool (198.19.16.0/21)" in plain(result)
    assert lab.snapshot() == before
    assert ippool(lab)["blockSize"] == 26


def test_with_the_api_server_nat_outgoing_is_applied_and_waited_for(lab):
    data = {"calico_pool_nat_outgoing": "Disabled", "calico_apiserver": "Enabled"}
    dry = lab.deploy("--dry", "--diff", data=data)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "the operator will apply this through the Calico API server: IPPool default-ipv4-ippool (198.19.16.0/21): natOutgoing true -> false" in plain(dry)
    assert "+kind: APIServer" in plain(dry)
    assert ippool(lab)["natOutgoing"] is True

    result = lab.deploy("-y", data=data)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ippool(lab)["natOutgoing"] is False
    assert tigerastatus(lab, "ippools")["Available"] == "True"
    assert tigerastatus(lab, "apiserver")["Available"] == "True"

    # back to the course's pool: the API server left in the cluster lets the operator apply it
    back = lab.deploy("-y")
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    assert ippool(lab)["natOutgoing"] is True
    assert_lab_healthy(lab)


def test_a_cloud_init_change_is_reported_per_vm_with_how_to_recreate_never_applied_silently(lab):
    before = lab.snapshot()
    result = lab.deploy("--dry", data={"tcp_mss": 1200})
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for name in VMS:
        assert f"{name} was created from a different cloud-init user-data" in output
        assert f"teardown.py --limit {name}" in output
    assert lab.snapshot() == before


def test_stopped_lab_is_not_started_by_dry_run_and_comes_back_with_a_rerun(lab):
    stop = lab.netlab.multipass("stop", "--all")
    assert stop.returncode == 0, stop.stderr
    assert set(lab.instances().values()) == {"Stopped"}

    before, calls_before = lab.snapshot(), len(lab.multipass_calls())
    dry = lab.deploy("--dry", "--diff")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert lab.snapshot() == before
    mutating = [argv for argv in lab.multipass_calls()[calls_before:] if argv and argv[0] in MUTATING]
    assert mutating == [], "a dry run may only read"
    output = dry.stdout + dry.stderr
    for name in VMS:
        assert f"{name} is Stopped: it will be started" in output

    result = lab.deploy("-y")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_lab_healthy(lab)


def test_restarted_node_is_brought_back_and_reverified(lab):
    restart = lab.netlab.multipass("restart", "node2")
    assert restart.returncode == 0, restart.stderr
    result = lab.deploy("-y")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_lab_healthy(lab)


def test_a_vm_that_will_not_start_ends_the_run_naming_it_and_a_rerun_resumes(lab):
    assert lab.netlab.multipass("stop", "node1").returncode == 0
    lab.netlab.set_faults({"fail": {"start:node1": "The following errors occurred:\nnode1: timed out waiting for response"}})
    failed = lab.deploy("-y")
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "node1" in output and "timed out waiting for response" in output
    assert "Next: Multipass timed out; check `multipass list` and `multipass info node1`" in output
    assert lab.instances()["node1"] == "Stopped"

    lab.netlab.set_faults({})
    resumed = lab.deploy("-y")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_lab_healthy(lab)


def test_a_new_k3s_version_is_applied_in_place(lab):
    token = (lab.state_dir / "cluster-token").read_text()
    result = lab.deploy("-y", data={"k3s_version": K3S_UPGRADE})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("control", "node1", "node2"):
        assert lab.vm(name, "k3s --version").startswith(f"k3s version {K3S_UPGRADE}"), name
    assert (lab.state_dir / "cluster-token").read_text() == token, "same lab, same token"
    assert not [argv for argv in lab.multipass_calls() if argv[:1] in (["delete"], ["purge"])], "no VM was recreated"
    assert_lab_healthy(lab)
    again = lab.deploy("-y", "--json", data={"k3s_version": K3S_UPGRADE})
    assert results_totals(again)["success"] == 0


def test_a_launch_that_finds_the_vm_already_there_never_advises_deleting_it_blindly(lab):
    assert lab.netlab.multipass("delete", "--purge", "host1").returncode == 0
    # another run creates host1 between this run's look at `multipass list` and its launch
    lab.netlab.set_faults({"fail": {"launch:host1": 'instance "host1" already exists'}})
    failed = lab.deploy("-y")
    output = plain(failed)
    assert failed.returncode != 0
    assert 'launch host1 failed: launch failed: instance "host1" already exists' in output
    assert "another calicolab run or another process may be creating it right now" in output
    assert "Check `multipass list` and wait for that run to finish" in output
    assert "only if nothing uses host1, remove it (`multipass delete --purge host1`)" in output
    assert "Traceback" not in output


def test_a_cloud_init_error_names_the_module_and_how_to_recreate_that_vm(lab):
    lab.netlab.set_faults({"cloud_init_fault": {"host1": "runcmd"}})
    failed = lab.deploy("-y")
    output = plain(failed)
    assert failed.returncode != 0
    assert ("cloud-init failed in host1 (status: error), module scripts_user (the runcmd commands): "
            "RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands')") in output
    assert "`multipass exec host1 -- sudo tail -n 50 /var/log/cloud-init-output.log`" in output
    assert "recreate host1 with `multipass delete --purge host1`, then re-run the deploy" in output

    # the advice works: the fault is gone, the VM is recreated, the lab comes back
    lab.netlab.set_faults({})
    assert lab.netlab.multipass("delete", "--purge", "host1").returncode == 0
    resumed = lab.deploy("-y")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_lab_healthy(lab)


def test_a_failed_rollout_names_its_pods_reasons_and_the_next_command(lab):
    lab.set_controller_switches({"deployment_modes": {
        "yaobank/customer": "image-pull", "yaobank/summary": "unschedulable", "yaobank/database": "crash-loop"}})
    failed = lab.deploy("-y", data={"timeout_rollout": 4})
    output = plain(failed)
    assert failed.returncode != 0
    # the run ends at the phase boundary: host1's page check never waits for a failed app
    assert 'Run stopped at "── phase 4 done: YaoBank rolled out ──"' in output
    assert "Verify: YaoBank answers" not in output
    assert "YaoBank: deployments rolled out" in output or "rollout of customer, summary, database" in output
    customer = re.search(r"pod (customer-[a-z0-9]+-[a-z0-9]+): ImagePullBackOff \(container customer\): "
                         r'Back-off pulling image "calico/yaobank-customer:multiarch"', output)
    assert customer, output[-4000:]
    assert re.search(r"pod summary-[a-z0-9-]+: Pending \(Unschedulable\): 0/3 nodes are available: "
                     r"3 Insufficient memory", output)
    database = re.search(r"pod (database-[a-z0-9-]+): CrashLoopBackOff \(container database\): last exit code 1",
                         output)
    assert database
    assert 'Warning Failed pod/customer-' in output and 'Failed to pull image "calico/yaobank-customer:multiarch"' in output
    assert "Warning FailedScheduling pod/summary-" in output
    assert "no related events" not in output
    kubectl = "multipass exec control -- sudo k3s kubectl"
    assert f"Next: `{kubectl} -n yaobank describe pod {customer.group(1)}`" in output
    assert f"Next: `{kubectl} -n yaobank logs {database.group(1)} -c database --previous`" in output
    assert ('Next: check that the image "calico/yaobank-customer:multiarch" (setting yaobank_images) exists'
            in output)
    # the suggested command runs as written and shows the same reason
    command = f"{kubectl} -n yaobank get pod {customer.group(1)} -o json".split()
    shown = lab.netlab.ws_run(command, env=lab.netlab.ws_env(), timeout=60)
    assert shown.returncode == 0, shown.stderr
    states = [c["state"] for c in json.loads(shown.stdout)["status"]["containerStatuses"]]
    assert states[0]["waiting"]["reason"] == "ImagePullBackOff"

    lab.set_controller_switches({"deployment_modes": {}})
    resumed = lab.deploy("-y")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_lab_healthy(lab)


def test_limit_to_a_stopped_vm_says_the_workstation_is_left_out_and_how_to_include_it(lab):
    assert lab.netlab.multipass("stop", "node2").returncode == 0
    before, calls_before = lab.snapshot(), len(lab.multipass_calls())
    failed = lab.deploy("-y", "--limit", "node2")
    output = plain(failed)
    assert failed.returncode != 0
    assert ("node2 is Stopped: the run leaves out the workstation (@local), which launches and starts the lab "
            "VMs. Run the deploy without --limit, or add the workstation: --limit @local") in output
    assert "Traceback" not in output
    assert lab.snapshot() == before
    assert not [argv for argv in lab.multipass_calls()[calls_before:] if argv and argv[0] in MUTATING]

    # the advice works: with the workstation in the run, node2 is started and re-verified
    resumed = lab.deploy("-y", "--limit", "node2", "--limit", "@local")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert lab.instances()["node2"] == "Running"
    assert_lab_healthy(lab)


def test_no_secret_appeared_in_any_output_of_the_module(lab):
    import yaml

    everything = "\n".join(lab.outputs)
    assert len(lab.outputs) >= 8
    token = (lab.state_dir / "cluster-token").read_text().strip()
    user = yaml.safe_load((lab.state_dir / "kubeconfig.yaml").read_text())["users"][0]["user"]
    for secret in (token, user["client-key-data"], user["client-certificate-data"]):
        assert secret and secret not in everything


def test_teardown_removes_the_lab_vms_and_state_but_no_other_instance(lab):
    other = lab.netlab.multipass("launch", "-n", "someone-elses", "24.04")
    assert other.returncode == 0, other.stderr
    argv = [PYINFRA, "inventory.py", "teardown.py", "-y", f"--data=state_dir={lab.state_dir}"]
    result = lab.netlab.ws_run(argv, env=lab.netlab.ws_env(), cwd=str(PROJECT), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert lab.instances() == {"someone-elses": "Running"}
    assert not lab.state_dir.exists()
    assert workstation_cache(lab).is_dir(), "teardown keeps the downloads for the next build"


def workstation_cache(lab: Lab) -> Path:
    """The lab's $XDG_CACHE_HOME/calicolab/downloads (the netlab sets XDG_CACHE_HOME per lab)."""
    return lab.netlab.workdir / "workstation-cache" / "calicolab" / "downloads"
