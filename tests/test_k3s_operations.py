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
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.connectors.fake import FakeConnector
from pyinfra.connectors.local import LocalConnector
from pyinfra.connectors.ssh import SSHConnector

from calicolab.constants import K3S_KUBECONFIG_PATH, K3S_TOKEN_PATH
from calicolab.facts.k3s import K3sNodes, RewrittenFileSha256
from calicolab.downloads import Download, DownloadCache
from calicolab.model import load_defaults, load_lab
from calicolab.operations import k3s, tools
from calicolab.state import SECRET_FILTER, LabState

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


def test_k3s_nodes_fact():
    assert K3sNodes().process(["node/control", "node/node1", ""]) == ["control", "node1"]
    assert K3sNodes.default() == []


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
        assert "chmod 0600 /etc/rancher/k3s/calicolab-token" in "\n".join(h.commands(name))


def test_token_unchanged_means_no_upload(harness, lab):
    local = LabState(lab.state_path)
    token = local.cluster_token()
    h = harness({"control": file_facts(K3S_TOKEN_PATH, (token + "\n").encode())})
    meta = h.add(k3s.secret_file, name="token", path=K3S_TOKEN_PATH, content=local.cluster_token_source())
    assert not meta.will_change
    h.run()
    assert not meta.did_change() and h.uploads == []


def test_token_differs_remote_means_upload_never_shown(harness, lab, unmasked_logs):
    local = LabState(lab.state_path)
    token = local.cluster_token()
    h = harness({"control": file_facts(K3S_TOKEN_PATH, b"old-token-value\n")}, diff=True)
    tok = h.add(k3s.secret_file, name="token", path=K3S_TOKEN_PATH, content=local.cluster_token_source())
    assert "Will modify" in unmasked_logs.text and "content is secret, not shown" in unmasked_logs.text
    assert token not in unmasked_logs.text and "old-token-value" not in unmasked_logs.text
    h.run()
    assert tok.did_change() and h.uploads[0][2] == (token + "\n").encode()
    assert token not in unmasked_logs.text + h.op_texts()


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
    # the folder is ubuntu's and 0700 before the file is written into it
    folder = [commands.index(c) for c in ("mkdir -p /home/ubuntu/.kube", "chmod 700 /home/ubuntu/.kube",
                                          "chown ubuntu:ubuntu /home/ubuntu/.kube")]
    assert max(folder) < commands.index("<upload /home/ubuntu/.kube/config>")
    assert "chown ubuntu:ubuntu /home/ubuntu/.kube/config" in "\n".join(commands)
    assert "chmod 0600 /home/ubuntu/.kube/config" in "\n".join(commands)
    assert h.uploads[0][1] == path and b"198.19.0.1:6443" in h.uploads[0][2]
    assert "S0VZLURBVEEtc2VjcmV0LWtleQ==" not in unmasked_logs.text + h.op_texts()


def test_kubeconfig_installed_fails_cleanly_without_local_file(harness, lab, caplog):
    path = "/home/ubuntu/.kube/config"
    h = harness({"host1": file_facts(path, None)})
    meta = h.add(k3s.kubeconfig_installed, name="kc", lab=lab, path=path, host="host1")
    h.run()
    assert meta.did_error()
    assert "not fetched from control" in caplog.text


def test_profile_content(lab):
    from calicolab.render import render_profile

    text = render_profile(lab)
    assert "export DATASTORE_TYPE=kubernetes\n" in text
    assert "export KUBECONFIG=/home/ubuntu/.kube/config\n" in text
    assert "alias calicoctl='calicoctl --allow-version-mismatch'\n" in text


def test_a_bug_in_a_wait_ends_it_at_once_instead_of_waiting_out_its_timeout(harness, caplog, monkeypatch):
    """Only an unreachable API is worth waiting for; a plain bug fails the step with its cause."""

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(k3s, "node_names", lambda lines: {}["no such key"])
    h = harness({"control": {"get nodes -o name": ["node/control"]}})
    meta = h.add(k3s.node_registered, name="nodes", names=["control", "node1"], timeout=3600)
    h.run()
    assert meta.did_error()
    assert "KeyError" in caplog.text and "not reached within" not in caplog.text


# --- files from the workstation's download cache ------------------------------------------------


@pytest.fixture
def published(tmp_path):
    """A tool and its SHA256SUMS behind file:// URLs, and an empty cache folder."""

    body = b"#!/bin/sh\necho tool v2\n"
    (tmp_path / "tool").write_bytes(body)
    (tmp_path / "SHA256SUMS").write_text(f"{hashlib.sha256(body).hexdigest()}  tool\n")
    item = Download(f"file://{tmp_path}/tool", f"file://{tmp_path}/SHA256SUMS")
    return item, body, tmp_path / "cache"


def test_a_tool_is_downloaded_only_by_the_executing_run_and_renamed_into_place(harness, published, unmasked_logs):
    item, body, cache = published
    h = harness({"host1": file_facts("/usr/local/bin/tool", None)}, diff=True)
    meta = h.add(tools.downloads_installed, name="tool", files={"/usr/local/bin/tool": item}, cache_dir=str(cache),
                 host="host1")
    assert meta.will_change and not cache.exists()  # planning (--dry) downloads nothing
    assert f"will download {item.url}" in unmasked_logs.text
    h.run()
    assert meta.did_change()
    assert h.uploads == [("@fake/host1", "/usr/local/bin/tool.calicolab-new", body)]
    placed = "\n".join(h.commands("host1"))
    assert placed.index("mv -f /usr/local/bin/tool.calicolab-new /usr/local/bin/tool") > placed.index(
        "chmod 0755 /usr/local/bin/tool.calicolab-new") > placed.index("chown root:root /usr/local/bin/tool.calicolab-new")


def test_a_tool_whose_remote_hash_matches_the_download_is_left_alone(harness, published):
    item, body, cache = published
    DownloadCache(cache).fetch(item)
    h = harness({"host1": file_facts("/usr/local/bin/tool", body, mode="-rwxr-xr-x")})
    meta = h.add(tools.downloads_installed, name="tool", files={"/usr/local/bin/tool": item}, cache_dir=str(cache),
                 host="host1")
    assert not meta.will_change
    h.run()
    assert not meta.did_change() and h.uploads == []


def test_a_tool_that_fails_its_checksum_is_not_installed_and_the_error_names_it(harness, published, caplog):
    item, body, cache = published
    (cache.parent / "SHA256SUMS").write_text(f"{'e' * 64}  tool\n")
    h = harness({"host1": file_facts("/usr/local/bin/tool", None)})
    meta = h.add(tools.downloads_installed, name="tool", files={"/usr/local/bin/tool": item}, cache_dir=str(cache),
                 host="host1")
    h.run()
    assert meta.did_error() and h.uploads == []
    assert f"{item.url} does not match its published checksum" in caplog.text
