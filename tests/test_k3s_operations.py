"""k3s / host1 operations and facts, run in-process against pyinfra's ``@fake`` connector.

``add_op`` alone is the Prepare stage (what ``--dry`` shows); ``run_ops`` is Execute.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess

import pytest
from pyinfra.operations import systemd
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.connectors.fake import FakeConnector
from pyinfra.connectors.local import LocalConnector
from pyinfra.connectors.ssh import SSHConnector

from calicolab.constants import K3S_CONFIG_PATH, K3S_KUBECONFIG_PATH, K3S_TOKEN_PATH
from calicolab.facts.k3s import K3sNodes, K3sVersion, RewrittenFileSha256, ToolVersion, parse_tool_version
from calicolab.model import load_defaults, load_lab
from calicolab.operations import k3s, tools
from calicolab.state import SECRET_FILTER, LabState

VERSION = "v1.35.4+k3s1"
INSTALL_URL = "https://get.k3s.io"
SERVER_URL = "https://198.19.0.1:6443"
KUBECONFIG = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0EtREFUQQ==
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: Q0VSVC1EQVRBLUNFUlQ=
    client-key-data: S0VZLURBVEEtc2VjcmV0LWtleQ==
"""


# --- harness ------------------------------------------------------------------------------


def stat_line(path, mode="-rw-------", user="root", group="root"):
    return f"user={user} group={group} mode={mode} atime=0 mtime=0 ctime=0 size=1 '{path}'"


def file_facts(path, content: bytes | None, mode="-rw-------", user="root", group="root"):
    """fake_responses for the File / Sha256File facts of ``path`` (absent when content is None)."""

    quoted = re.escape(path)
    if content is None:
        return {re.compile(rf"^! \(test -e {quoted} "): "", re.compile(rf"sha256sum {quoted} "): ""}
    return {
        re.compile(rf"^! \(test -e {quoted} "): stat_line(path, mode, user, group),
        re.compile(rf"sha256sum {quoted} "): f"{hashlib.sha256(content).hexdigest()}  {path}",
    }


class Harness:
    def __init__(self, hosts: dict[str, dict], diff: bool = False):
        names = [(f"@fake/{name}", {"fake_responses": responses}) for name, responses in hosts.items()]
        inventory = Inventory((names, {"fake_delay": 0, "fake_delay_jitter": 0}))
        self.state = State(inventory, Config(DIFF=diff))
        connect_all(self.state)
        self.uploads: list[tuple[str, str, bytes]] = []

    def host(self, name="control"):
        return self.state.inventory.get_host(f"@fake/{name}")

    def add(self, op, *args, host="control", **kwargs):
        return add_op(self.state, op, *args, host=self.host(host), **kwargs)[self.host(host)]

    def run(self):
        try:
            run_ops(self.state)
        except PyinfraError as e:  # every host failed: the ops' metas tell the details
            assert "No hosts remaining" in str(e)

    def commands(self, name="control") -> list[str]:
        return self.host(name).connector.executed_commands

    def op_texts(self) -> str:
        """Everything pyinfra keeps about the ops: names, args, and the commands."""

        parts = []
        for meta in self.state.op_meta.values():
            parts.extend(str(n) for n in meta.names)
            parts.append(repr(meta.args))
        for name in self.state.inventory.hosts:
            parts.extend(self.state.inventory.get_host(name).connector.executed_commands)
        return "\n".join(parts)


@pytest.fixture
def harness(monkeypatch):
    """Build harnesses; connectors limited to built-ins; uploads recorded."""

    connectors = {"fake": FakeConnector, "ssh": SSHConnector, "local": LocalConnector}
    monkeypatch.setattr("pyinfra.api.inventory.get_all_connectors", lambda: connectors)
    monkeypatch.setattr("pyinfra.api.inventory.get_execution_connectors", lambda: connectors)
    uploads: list = []

    def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None, **kwargs):
        if hasattr(filename_or_io, "read"):
            data = filename_or_io.read()
            data = data.encode() if isinstance(data, str) else data
        else:
            with open(filename_or_io, "rb") as f:
                data = f.read()
        uploads.append((self.host.name, remote_filename, data))
        self.executed_commands.append(f"<upload {remote_filename}>")
        return True

    monkeypatch.setattr(FakeConnector, "put_file", put_file)

    def make(hosts=None, diff=False):
        h = Harness(hosts or {"control": {}}, diff=diff)
        h.uploads = uploads
        return h

    return make


@pytest.fixture
def lab(tmp_path):
    return load_lab({**load_defaults(), "state_dir": str(tmp_path / "state")})


@pytest.fixture
def unmasked_logs(monkeypatch, caplog):
    """Capture pyinfra's logs with the masking filter removed: what our code itself emits."""

    for logger in (logging.getLogger("pyinfra"), logging.getLogger("pyinfra_cli")):
        monkeypatch.setattr(logger, "filters", [f for f in logger.filters if f is not SECRET_FILTER])
    caplog.set_level(logging.DEBUG)
    return caplog


# --- facts --------------------------------------------------------------------------------


def test_k3s_version_fact():
    fact = K3sVersion()
    command = str(fact.command())
    assert "/usr/local/bin/k3s --version" in command and "|| true" in command
    assert fact.process(["k3s version v1.35.4+k3s1 (0123abcd)", "go version go1.24.1"]) == VERSION
    assert fact.process(["garbage"]) is None
    assert K3sVersion.default() is None


def test_k3s_nodes_fact():
    assert K3sNodes().process(["node/control", "node/node1", ""]) == ["control", "node1"]
    assert K3sNodes.default() == []


def test_tool_version_parsing():
    kubectl_json = ['{', '  "clientVersion": {', '    "gitVersion": "v1.35.4",', '    "major": "1"', "  }", "}"]
    assert parse_tool_version("kubectl", kubectl_json) == "v1.35.4"
    calicoctl = ["Client Version:    v3.32.1", "Git commit:        abc", "Unable to retrieve Cluster Version"]
    assert parse_tool_version("calicoctl", calicoctl) == "v3.32.1"
    assert parse_tool_version("calicoctl", []) is None
    fact = ToolVersion()
    command = str(fact.command(tool="kubectl", path="/usr/local/bin/kubectl"))
    assert "version --client -o json" in command and "|| true" in command
    assert fact.process(kubectl_json) == "v1.35.4"


def test_rewritten_sha_fact_matches_python_rewrite(tmp_path):
    """The fact's sed rewrite and rewrite_kubeconfig() must agree byte for byte."""

    path = tmp_path / "k3s.yaml"
    path.write_text(KUBECONFIG)
    command = RewrittenFileSha256().command(path=str(path), server=SERVER_URL).get_raw_value()
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    remote_sha = RewrittenFileSha256().process(out.splitlines())
    rewritten = k3s.rewrite_kubeconfig(KUBECONFIG, SERVER_URL)
    assert "server: https://198.19.0.1:6443" in rewritten and "127.0.0.1" not in rewritten
    assert remote_sha == hashlib.sha256(rewritten.encode()).hexdigest()
    missing = RewrittenFileSha256().command(path=str(tmp_path / "nope"), server=SERVER_URL).get_raw_value()
    assert subprocess.run(["sh", "-c", missing], capture_output=True, text=True).stdout == ""


# --- installer ------------------------------------------------------------------------------


def test_install_command_server():
    command = k3s.install_command(VERSION, "server", INSTALL_URL)
    assert "curl -sfL https://get.k3s.io" in command
    assert "INSTALL_K3S_VERSION=v1.35.4+k3s1" in command
    assert "INSTALL_K3S_EXEC=server sh -s -" in command
    assert "K3S_URL" not in command and "K3S_TOKEN" not in command
    assert command.startswith("set -e;")


def test_install_command_agent():
    command = k3s.install_command(VERSION, "agent", INSTALL_URL, SERVER_URL)
    assert f"K3S_URL={SERVER_URL}" in command
    assert f"K3S_TOKEN_FILE={K3S_TOKEN_PATH}" in command
    assert "K3S_TOKEN=" not in command
    assert "INSTALL_K3S_EXEC=agent sh -s -" in command


def test_install_command_validation():
    with pytest.raises(ValueError):
        k3s.install_command(VERSION, "agent", INSTALL_URL)  # no server URL
    with pytest.raises(ValueError):
        k3s.install_command(VERSION, "client", INSTALL_URL)
    with pytest.raises(ValueError):
        k3s.install_command("1.35; rm -rf /", "server", INSTALL_URL)


def test_install_command_fails_when_download_fails(tmp_path):
    """A failed curl must fail the command (a plain pipe would run an empty script: exit 0)."""

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "curl").write_text("#!/bin/sh\nexit 22\n")
    os.chmod(fake_bin / "curl", 0o755)
    command = k3s.install_command(VERSION, "server", INSTALL_URL)
    env = dict(os.environ, PATH=f"{fake_bin}:/usr/bin:/bin")
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True).returncode != 0


def test_installed_runs_installer_when_absent(harness):
    h = harness({"control": {"k3s --version": ""}})
    meta = h.add(k3s.installed, name="k3s", version=VERSION, role="server", install_url=INSTALL_URL)
    assert meta.will_change
    h.run()
    assert meta.did_change()
    assert h.commands()[-1] == k3s.install_command(VERSION, "server", INSTALL_URL)


def test_installed_skipped_when_version_matches(harness):
    h = harness({"control": {"k3s --version": f"k3s version {VERSION} (abc)"}})
    meta = h.add(k3s.installed, name="k3s", version=VERSION, role="server", install_url=INSTALL_URL)
    assert not meta.will_change
    h.run()
    assert not meta.did_change()
    assert not any("get.k3s.io" in c for c in h.commands())


def test_installed_upgrades_on_version_change(harness, caplog):
    caplog.set_level(logging.INFO)
    h = harness({"node1": {"k3s --version": "k3s version v1.34.1+k3s1 (abc)"}})
    meta = h.add(
        k3s.installed, name="k3s", version=VERSION, role="agent", install_url=INSTALL_URL,
        server_url=SERVER_URL, host="node1",
    )
    assert meta.will_change
    assert "upgrade k3s v1.34.1+k3s1 -> v1.35.4+k3s1" in caplog.text
    h.run()
    assert h.commands("node1")[-1] == k3s.install_command(VERSION, "agent", INSTALL_URL, SERVER_URL)


# --- service ------------------------------------------------------------------------------

ACTIVE = {
    "--property SubState k3s.service": ["Id=k3s.service", "SubState=running"],
    "--property UnitFileState k3s.service": ["Id=k3s.service", "UnitFileState=enabled"],
}
STOPPED = {
    "--property SubState k3s.service": ["Id=k3s.service", "SubState=dead"],
    "--property UnitFileState k3s.service": ["Id=k3s.service", "UnitFileState=enabled"],
}


def test_service_started_when_inactive(harness):
    h = harness({"control": STOPPED})
    meta = h.add(systemd.service, name="svc", service="k3s", running=True, enabled=True)
    h.run()
    assert meta.did_change()
    assert "systemctl start k3s.service" in h.commands()


def test_service_no_change_when_running(harness):
    h = harness({"control": ACTIVE})
    meta = h.add(systemd.service, name="svc", service="k3s", running=True, enabled=True)
    assert not meta.will_change
    h.run()
    assert not meta.did_change()


def test_config_change_restarts_service(harness, lab):
    """config written (changed) → the restart op guarded by _if=config.did_change runs."""

    h = harness({"control": {**ACTIVE, **file_facts(K3S_CONFIG_PATH, b"old: config\n")}})
    config = h.add(k3s.config, name="cfg", lab=lab, vm="control")
    restart = h.add(systemd.service, name="restart", service="k3s", running=True, restarted=True, enabled=True, _if=config.did_change)
    h.run()
    assert config.did_change() and restart.did_change()
    assert "systemctl restart k3s.service" in h.commands()
    assert K3S_CONFIG_PATH in [u[1] for u in h.uploads]


def test_unchanged_config_does_not_restart(harness, lab):
    from calicolab.render import render_k3s_config

    rendered = render_k3s_config(lab, "control").encode()
    h = harness({"control": {**ACTIVE, **file_facts(K3S_CONFIG_PATH, rendered)}})
    config = h.add(k3s.config, name="cfg", lab=lab, vm="control")
    restart = h.add(systemd.service, name="restart", service="k3s", running=True, restarted=True, enabled=True, _if=config.did_change)
    assert not config.will_change
    h.run()
    assert not config.did_change() and not restart.did_change()
    assert not any("restart" in c for c in h.commands())
    assert h.uploads == []


def test_config_diff_shown_for_new_file_in_prepare(harness, lab, caplog):
    caplog.set_level(logging.INFO)
    h = harness({"control": file_facts(K3S_CONFIG_PATH, None)}, diff=True)
    h.add(k3s.config, name="cfg", lab=lab, vm="control")
    assert "Will create" in caplog.text and "node-ip" in caplog.text
    h.run()
    upload = [u for u in h.uploads if u[1] == K3S_CONFIG_PATH][0]
    assert b"token-file: \"/etc/rancher/k3s/calicolab-token\"" in upload[2]
    commands = h.commands()
    # the file is created with its final mode before the content is written
    assert "{ [ -d /etc/rancher/k3s ] || install -d -m 0755 /etc/rancher/k3s ; }" in next(c for c in commands if "-m 0600 -o root -g root /dev/null" in c)
    create = next(i for i, c in enumerate(commands) if "/dev/null /etc/rancher/k3s/config.yaml" in c)
    assert "-m 0600 -o root -g root /dev/null /etc/rancher/k3s/config.yaml" in commands[create]
    assert create < commands.index(f"<upload {K3S_CONFIG_PATH}>")


# --- the join token ---------------------------------------------------------------------------


def test_dry_run_writes_nothing_locally(harness, lab, unmasked_logs):
    local = LabState(lab.state_path)
    h = harness({"control": file_facts(K3S_TOKEN_PATH, None)}, diff=True)
    meta = h.add(k3s.secret_file, name="token", path=K3S_TOKEN_PATH, content=local.cluster_token_source())
    assert meta.will_change
    assert "will generate the cluster token" in unmasked_logs.text
    assert not lab.state_path.exists()
    assert h.uploads == []


def test_token_uploaded_once_and_never_shown(harness, lab, unmasked_logs):
    local = LabState(lab.state_path)
    h = harness(
        {name: file_facts(K3S_TOKEN_PATH, None) for name in ("control", "node1", "node2")}, diff=True
    )
    metas = [
        h.add(k3s.secret_file, name="token", path=K3S_TOKEN_PATH, content=local.cluster_token_source(), host=n)
        for n in ("control", "node1", "node2")
    ]
    h.run()
    token = local.peek_cluster_token()
    assert token and all(m.did_change() for m in metas)
    # every host got the same token, generated once
    assert sorted(u[0] for u in h.uploads) == ["@fake/control", "@fake/node1", "@fake/node2"]
    assert {u[2] for u in h.uploads} == {(token + "\n").encode()}
    assert oct(os.stat(local.token_path).st_mode & 0o777) == "0o600"
    # never in names, args, commands or logs
    assert token not in h.op_texts()
    assert token not in unmasked_logs.text
    for name in ("control", "node1"):
        assert "chmod 0600 /etc/rancher/k3s/calicolab-token" in h.commands(name)


def test_token_unchanged_means_no_upload(harness, lab):
    local = LabState(lab.state_path)
    token = local.cluster_token()
    h = harness({"control": file_facts(K3S_TOKEN_PATH, (token + "\n").encode())})
    meta = h.add(k3s.secret_file, name="token", path=K3S_TOKEN_PATH, content=local.cluster_token_source())
    assert not meta.will_change
    h.run()
    assert not meta.did_change() and h.uploads == []


def test_token_differs_remote_means_upload_and_restart(harness, lab, unmasked_logs):
    local = LabState(lab.state_path)
    token = local.cluster_token()
    h = harness({"control": {**ACTIVE, **file_facts(K3S_TOKEN_PATH, b"old-token-value\n")}}, diff=True)
    tok = h.add(k3s.secret_file, name="token", path=K3S_TOKEN_PATH, content=local.cluster_token_source())
    assert "Will modify" in unmasked_logs.text and "content is secret, not shown" in unmasked_logs.text
    assert token not in unmasked_logs.text and "old-token-value" not in unmasked_logs.text
    restart = h.add(systemd.service, name="restart", service="k3s", running=True, restarted=True, enabled=True, _if=tok.did_change)
    h.run()
    assert h.uploads[0][2] == (token + "\n").encode()
    assert restart.did_change()


def test_secret_file_rejects_plain_values(harness):
    h = harness()
    with pytest.raises(TypeError):
        h.add(k3s.secret_file, name="x", path="/x", content="plain-secret-value")


# --- waits ----------------------------------------------------------------------------------


def test_api_ready_noop_when_ready(harness):
    h = harness({"control": {"--raw /readyz": "ok"}})
    meta = h.add(k3s.api_ready, name="api", timeout=5)
    assert not meta.will_change
    h.run()
    assert not meta.did_change() and not meta.did_error()


def test_api_ready_times_out_with_clear_error(harness, caplog):
    caplog.set_level(logging.INFO)
    h = harness({"control": {
        "if [ -x": "",  # the fact: k3s answers nothing yet (its command always exits 0)
        re.compile(r"^/usr/local/bin/k3s kubectl get --raw"): {"success": False, "stderr": "connection refused"},
    }})
    meta = h.add(k3s.api_ready, name="api", timeout=0.2)
    assert meta.will_change
    h.run()
    assert meta.did_error()
    assert "k3s API /readyz: not reached within 0.2s on @fake/control" in caplog.text
    assert "connection refused" in caplog.text


def test_node_registered(harness):
    h = harness({"control": {"get nodes -o name": ["node/control", "node/node1", "node/node2"]}})
    meta = h.add(k3s.node_registered, name="nodes", names=["control", "node1", "node2"], timeout=5)
    assert not meta.will_change
    h2 = harness({"control": {"get nodes -o name": ["node/control", "node/node1"]}})
    meta2 = h2.add(k3s.node_registered, name="nodes", names=["control", "node1", "node2"], timeout=0.2)
    assert meta2.will_change
    h2.run()
    assert meta2.did_error()


# --- kubeconfig -------------------------------------------------------------------------------


def kubeconfig_responses(text=KUBECONFIG):
    rewritten = k3s.rewrite_kubeconfig(text, SERVER_URL)
    return {
        re.compile(r"^if \[ -f /etc/rancher/k3s/k3s.yaml \]; then sed "): hashlib.sha256(rewritten.encode()).hexdigest() + "  -",
        f"cat {K3S_KUBECONFIG_PATH}": text.splitlines(),
    }


def test_kubeconfig_fetched_to_local_state(harness, lab, unmasked_logs):
    h = harness({"control": kubeconfig_responses()}, diff=True)
    meta = h.add(k3s.kubeconfig_fetched, name="kc", lab=lab)
    assert meta.will_change and not lab.state_path.exists()  # Prepare writes nothing
    h.run()
    local = LabState(lab.state_path)
    assert local.kubeconfig_path.read_text() == k3s.rewrite_kubeconfig(KUBECONFIG, SERVER_URL)
    assert oct(os.stat(local.kubeconfig_path).st_mode & 0o777) == "0o600"
    assert "S0VZLURBVEEtc2VjcmV0LWtleQ==" not in unmasked_logs.text
    # second run: identical → no change
    h2 = harness({"control": kubeconfig_responses()})
    meta2 = h2.add(k3s.kubeconfig_fetched, name="kc", lab=lab)
    assert not meta2.will_change
    h2.run()
    assert not meta2.did_change()


def test_kubeconfig_installed_on_host1(harness, lab, unmasked_logs):
    path = "/home/ubuntu/.kube/config"
    h = harness({"host1": {**file_facts(path, None), re.compile(r"^! \(test -e /home/ubuntu/.kube "): ""}}, diff=True)
    meta = h.add(k3s.kubeconfig_installed, name="kc", lab=lab, path=path, host="host1")
    assert meta.will_change  # local file not fetched yet: over-report in Prepare
    assert "will install the admin kubeconfig" in unmasked_logs.text
    # the control op ran in an earlier phase:
    LabState(lab.state_path).write_private("kubeconfig.yaml", k3s.rewrite_kubeconfig(KUBECONFIG, SERVER_URL))
    h.run()
    assert meta.did_change()
    commands = h.commands("host1")
    assert "install -d -m 0700 -o ubuntu -g ubuntu /home/ubuntu/.kube" in commands
    assert "chown ubuntu:ubuntu /home/ubuntu/.kube/config" in commands
    assert "chmod 0600 /home/ubuntu/.kube/config" in commands
    assert h.uploads[0][1] == path and b"198.19.0.1:6443" in h.uploads[0][2]
    assert "S0VZLURBVEEtc2VjcmV0LWtleQ==" not in unmasked_logs.text + h.op_texts()


def test_kubeconfig_installed_fails_cleanly_without_local_file(harness, lab, caplog):
    path = "/home/ubuntu/.kube/config"
    h = harness({"host1": file_facts(path, None)})
    meta = h.add(k3s.kubeconfig_installed, name="kc", lab=lab, path=path, host="host1")
    h.run()
    assert meta.did_error()
    assert "not fetched from control" in caplog.text


# --- host1 tools ------------------------------------------------------------------------------

KUBECTL_SHA = "a" * 64
SUMS = (
    f"{'b' * 64}  calicoctl-linux-arm64\n"
    f"{'c' * 64}  calicoctl-linux-amd64\n"
    f"{'d' * 64} *bin/calicoctl-darwin-amd64\n"
)


def test_parse_sha256_bare_digest():
    assert tools.parse_sha256_file(KUBECTL_SHA + "\n", "kubectl") == KUBECTL_SHA
    assert tools.parse_sha256_file(KUBECTL_SHA.upper(), "kubectl") == KUBECTL_SHA


def test_parse_sha256_sums_file():
    assert tools.parse_sha256_file(SUMS, "calicoctl-linux-amd64") == "c" * 64
    assert tools.parse_sha256_file(SUMS, "calicoctl-darwin-amd64") == "d" * 64
    with pytest.raises(tools.ChecksumError):
        tools.parse_sha256_file(SUMS, "calicoctl-windows-amd64.exe")
    with pytest.raises(tools.ChecksumError):
        tools.parse_sha256_file("<html>not found</html>", "kubectl")


def test_go_arch():
    assert tools.go_arch("x86_64") == "amd64"
    assert tools.go_arch("aarch64\n") == "arm64"
    assert tools.go_arch("riscv64") is None and tools.go_arch(None) is None


def test_install_checked_command_detects_mismatch(tmp_path):
    """Run the real script with a stand-in curl: good digest installs, bad digest fails."""

    payload = b"#!/bin/sh\necho fake tool\n"
    src = tmp_path / "payload"
    src.write_bytes(payload)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "curl").write_text(f'#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\ncp {src} "$2"\n')
    os.chmod(fake_bin / "curl", 0o755)
    # install -o root needs root; let a stand-in install copy the file
    (fake_bin / "install").write_text('#!/bin/sh\neval "dest=\\${$#}"; eval "src=\\${$(($#-1))}"; mkdir -p "$(dirname "$dest")"; cp "$src" "$dest"; chmod 755 "$dest"\n')
    os.chmod(fake_bin / "install", 0o755)
    env = dict(os.environ, PATH=f"{fake_bin}:/usr/bin:/bin")
    dest = tmp_path / "out" / "tool"

    bad = tools.install_checked_command("https://example.invalid/tool", "0" * 64, str(dest))
    result = subprocess.run(["sh", "-c", bad], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "checksum mismatch" in result.stderr
    assert not dest.exists()

    good = tools.install_checked_command("https://example.invalid/tool", hashlib.sha256(payload).hexdigest(), str(dest))
    result = subprocess.run(["sh", "-c", good], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == payload


def binary_op(h, tool="calicoctl", version="v3.32.1"):
    templates = {
        "kubectl": (
            "https://dl.k8s.io/release/{version}/bin/linux/{arch}/kubectl",
            "https://dl.k8s.io/release/{version}/bin/linux/{arch}/kubectl.sha256",
        ),
        "calicoctl": (
            "https://github.com/projectcalico/calico/releases/download/{version}/calicoctl-linux-{arch}",
            "https://github.com/projectcalico/calico/releases/download/{version}/SHA256SUMS",
        ),
    }
    url, sha = templates[tool]
    return h.add(
        tools.binary, name=tool, tool=tool, url=url, sha256_url=sha,
        dest=f"/usr/local/bin/{tool}", version=version, host="host1",
    )


def test_binary_skipped_when_version_matches(harness):
    h = harness({"host1": {"calicoctl version": "Client Version:    v3.32.1"}})
    meta = binary_op(h)
    assert not meta.will_change
    h.run()
    assert not meta.did_change()


def test_binary_installs_with_checked_digest(harness):
    h = harness({"host1": {
        "calicoctl version": "",
        "uname -m": "x86_64",
        "SHA256SUMS": SUMS.splitlines(),
    }})
    meta = binary_op(h)
    assert meta.will_change
    h.run()
    assert meta.did_change()
    install = h.commands("host1")[-1]
    assert "calicoctl-linux-amd64" in install and "c" * 64 in install
    assert "install -D -m 0755 -o root -g root" in install


def test_binary_kubectl_arm64(harness):
    h = harness({"host1": {
        "version --client": "",
        "uname -m": "aarch64",
        "kubectl.sha256": KUBECTL_SHA,
    }})
    meta = binary_op(h, "kubectl", "v1.35.4")
    h.run()
    assert meta.did_change()
    install = h.commands("host1")[-1]
    assert "/v1.35.4/bin/linux/arm64/kubectl" in install and KUBECTL_SHA in install


def test_binary_fails_when_checksum_file_lacks_the_file(harness, caplog):
    h = harness({"host1": {"calicoctl version": "", "uname -m": "x86_64", "SHA256SUMS": "e" * 64 + "  other-file"}})
    meta = binary_op(h)
    h.run()
    assert meta.did_error()
    assert "no sha256 digest for 'calicoctl-linux-amd64'" in caplog.text


def test_binary_fails_on_mismatch_reported_by_the_vm(harness, caplog):
    h = harness({"host1": {
        "calicoctl version": "",
        "uname -m": "x86_64",
        re.compile(r"^curl -fsSL .*SHA256SUMS$"): SUMS.splitlines(),
        "set -e; tmp=": {"success": False, "stderr": "checksum mismatch: expected ccc, got 000"},
    }})
    meta = binary_op(h)
    h.run()
    assert meta.did_error()
    assert "checksum mismatch" in caplog.text


def test_profile_content(lab):
    from calicolab.render import render_profile

    text = render_profile(lab)
    assert "export DATASTORE_TYPE=kubernetes\n" in text
    assert "export KUBECONFIG=/home/ubuntu/.kube/config\n" in text
    assert "alias calicoctl='calicoctl --allow-version-mismatch'\n" in text


def test_rendered_file_noop_when_identical(harness, lab):
    from calicolab.render import render_profile

    content = render_profile(lab)
    h = harness({"host1": file_facts(tools.PROFILE_PATH, content.encode(), mode="-rw-r--r--")})
    meta = h.add(tools.rendered_file, name="p", dest=tools.PROFILE_PATH, content=content, mode="0644", host="host1")
    assert not meta.will_change
    h2 = harness({"host1": file_facts(tools.PROFILE_PATH, content.encode(), mode="-rw-rw-rw-")})
    meta2 = h2.add(tools.rendered_file, name="p", dest=tools.PROFILE_PATH, content=content, mode="0644", host="host1")
    h2.run()
    assert meta2.did_change() and h2.uploads == []
    assert "chmod 0644 /etc/profile.d/calicolab.sh" in h2.commands("host1")


# --- the phase functions (tasks/k3s.py) -------------------------------------------------------


class LabFakeConnector(FakeConnector):
    """``@labfake/control`` → a fake host named ``control`` (like ``@multipass/control``)."""

    @staticmethod
    def make_names_data(name=None):
        for sub_name in (name or "").split(","):
            yield sub_name, {}, ["@labfake"]


def lab_responses(name):
    """A fresh VM: nothing installed; k3s answers once installed (waits succeed)."""

    responses = {
        re.compile(r"^/usr/local/bin/k3s kubectl get --raw"): "ok",
        re.compile(r"^/usr/local/bin/k3s kubectl get nodes"): ["node/control", "node/node1", "node/node2"],
        "uname -m": "x86_64",
        re.compile(r"^curl -fsSL .*kubectl.sha256$"): KUBECTL_SHA,
        re.compile(r"^curl -fsSL .*SHA256SUMS$"): SUMS.splitlines(),
    }
    if name == "control":
        responses.update(kubeconfig_responses())
    return responses


def run_phase(monkeypatch, phase, lab, execute=True):
    import tasks.k3s as k3s_tasks
    from pyinfra.context import ctx_host, ctx_state

    connectors = {"labfake": LabFakeConnector, "fake": FakeConnector, "ssh": SSHConnector}
    monkeypatch.setattr("pyinfra.api.inventory.get_all_connectors", lambda: connectors)
    monkeypatch.setattr("pyinfra.api.inventory.get_execution_connectors", lambda: connectors)
    names = [(f"@labfake/{n}", {"fake_responses": lab_responses(n)}) for n in ("control", "node1", "node2", "host1")]
    inventory = Inventory((names, {"fake_delay": 0, "fake_delay_jitter": 0}))
    state = State(inventory, Config(DIFF=True))
    connect_all(state)
    with ctx_state.use(state):
        for host in inventory:
            with ctx_host.use(host):
                getattr(k3s_tasks, phase)(lab)
    if execute:
        run_ops(state)
    return state


def all_commands(state):
    return {h.name: list(h.connector.executed_commands) for h in state.inventory}


def test_phases_in_order(monkeypatch, lab, unmasked_logs):
    """Each phase is its own run here (in the deploy, barriers separate them)."""

    recorded = []
    monkeypatch.setattr(
        FakeConnector, "put_file",
        lambda self, src, remote, remote_temp_filename=None, **kw: recorded.append((self.host.name, remote, src.read())) or True,
    )
    states = {phase: run_phase(monkeypatch, phase, lab) for phase in ("server", "agents", "cluster_joined", "client")}

    for phase, st in states.items():
        failed = [h.name for h in st.inventory if st.results[h].error_ops]
        assert not failed, f"{phase}: failed on {failed}"

    token = LabState(lab.state_path).peek_cluster_token()
    assert token
    token_uploads = [r for r in recorded if r[1] == K3S_TOKEN_PATH]
    assert sorted(r[0] for r in token_uploads) == ["control", "node1", "node2"]
    assert {r[2] for r in token_uploads} == {(token + "\n").encode()}

    server_cmds = all_commands(states["server"])
    assert k3s.install_command(VERSION, "server", INSTALL_URL) in server_cmds["control"]
    assert server_cmds["node1"] == [] and server_cmds["host1"] == []
    # first install: the installer started k3s with the new config, no extra restart
    assert not any("systemctl restart" in c for c in server_cmds["control"])
    agent_cmds = all_commands(states["agents"])
    for node in ("node1", "node2"):
        assert k3s.install_command(VERSION, "agent", INSTALL_URL, SERVER_URL) in agent_cmds[node]
    assert agent_cmds["control"] == []

    assert LabState(lab.state_path).kubeconfig_path.exists()
    host1_uploads = {r[1]: r[2] for r in recorded if r[0] == "host1"}
    assert set(host1_uploads) == {"/etc/bird/bird.conf", "/home/ubuntu/.kube/config", "/etc/profile.d/calicolab.sh"}
    client_cmds = all_commands(states["client"])["host1"]
    assert any("calicoctl-linux-amd64" in c for c in client_cmds)
    assert any("/bin/linux/amd64/kubectl" in c for c in client_cmds)

    everything = "\n".join(
        "\n".join(cmds) for st in states.values() for cmds in all_commands(st).values()
    ) + "\n".join(repr(m.args) + repr(m.names) for st in states.values() for m in st.op_meta.values())
    assert token not in everything
    assert token not in unmasked_logs.text
    assert "S0VZLURBVEEtc2VjcmV0LWtleQ==" not in unmasked_logs.text + everything


def test_phases_dry_run_touch_nothing(monkeypatch, lab, unmasked_logs):
    recorded = []
    monkeypatch.setattr(FakeConnector, "put_file", lambda self, *a, **kw: recorded.append(a) or True)
    for phase in ("server", "agents", "cluster_joined", "client"):
        st = run_phase(monkeypatch, phase, lab, execute=False)
        changes = {h.name: st.get_meta_for_host(h).ops_change for h in st.inventory}
        if phase in ("server", "agents", "client"):
            assert any(changes.values())
    assert not lab.state_path.exists()
    assert recorded == []
    assert "will generate the cluster token" in unmasked_logs.text
