"""calicolab.operations.kubernetes driven through pyinfra's API (State, Inventory, add_op, run_ops)
with an ``@local`` host, against the Kubernetes API emulator on 127.0.0.1 (mTLS, k3s-style
kubeconfig in a temporary state folder)."""

from __future__ import annotations

import http.server
import ipaddress
import logging
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import yaml
from pyinfra.api import Config, Inventory, State
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from calicolab.kube import apply as kapply
from calicolab.kube import client as kclient
from calicolab.kube import waits
from calicolab.model import load_defaults, load_lab
from calicolab.operations import kubernetes
from tests.support.kubeapi import Emulator
from tests.support.kubeapi.controllers import FakeCluster

pytestmark = pytest.mark.timeout(60)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Never probe a lab address from the machine's own network namespace (only the test lab's namespaces carry lab traffic)."""
    real = kclient.tcp_answers

    def guarded(url, timeout=kclient.PROBE_TIMEOUT):
        host = urlsplit(url).hostname
        if host != "localhost":
            assert ipaddress.ip_address(host).is_loopback, f"test tried to reach {url}"
        return real(url, timeout=0.5)

    monkeypatch.setattr(kclient, "tcp_answers", guarded)


@pytest.fixture(scope="module")
def emu():
    emulator = Emulator(san_ips=["127.0.0.1"], san_dns=["kubernetes", "kubernetes.default", "localhost"]).start()
    yield emulator
    emulator.stop()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


#: Management addresses on the loopback: the API emulator listens there as control.
LOOPBACK = {"control": "127.0.0.1", "node1": "127.0.0.2", "node2": "127.0.0.3", "host1": "127.0.0.254"}


def make_lab(tmp_path, api_port, **settings):
    return load_lab(load_defaults() | {
        "mgmt_ips": LOOPBACK, "state_dir": str(tmp_path), "k3s_api_port": api_port, "timeout_rollout": 2,
        "timeout_operator_ready": 2, "timeout_calico_available": 2, "timeout_nodes_ready": 2, "timeout_app_answer": 2,
    } | settings)


@pytest.fixture
def lab(tmp_path, emu):
    emu.write_kubeconfig(tmp_path / "kubeconfig.yaml")
    return make_lab(tmp_path, emu.port)


@pytest.fixture
def down_lab(tmp_path):
    """A lab whose kubeconfig points at a closed port and whose control address answers nothing."""
    port = closed_port()
    Emulator(tls=True).write_kubeconfig(tmp_path / "kubeconfig.yaml", server=f"https://127.0.0.1:{port}")
    return make_lab(tmp_path, port)


class Run:
    """One pyinfra run on @local: prepare (add_op) then optionally execute (run_ops)."""

    def __init__(self, diff=False):
        self.inventory = Inventory((["@local"], {}))
        self.state = State(self.inventory, Config(DIFF=diff))
        self.state.print_noop_info = True
        connect_all(self.state)
        self.host = self.inventory.get_host("@local")
        self.metas = []

    def add(self, op, **kwargs):
        kwargs.setdefault("name", op.__name__)
        meta = add_op(self.state, op, **kwargs)[self.host]
        self.metas.append(meta)
        return meta

    def execute(self):
        try:
            run_ops(self.state)
        except PyinfraError as exc:  # the only host failed
            assert "No hosts remaining" in str(exc)
        return self

    @property
    def results(self):
        return self.state.get_results_for_host(self.host)


def ok(meta) -> bool:
    return meta.did_succeed()


# --- manifests ---------------------------------------------------------------------------------

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: customer, namespace: yaobank}
spec:
  replicas: %(replicas)d
  selector: {matchLabels: {app: customer}}
  template:
    metadata: {labels: {app: customer}}
    spec: {containers: [{name: customer, image: "calico/yaobank-customer:multiarch"}]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: customer, namespace: yaobank}
---
apiVersion: v1
kind: Namespace
metadata: {name: yaobank}
"""

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: %(plural)s.operator.tigera.io}
spec:
  group: operator.tigera.io
  scope: Cluster
  names: {kind: %(kind)s, listKind: %(kind)sList, plural: %(plural)s, singular: %(singular)s}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def app(replicas=1):
    return APP % {"replicas": replicas}


def crd(kind, plural):
    return CRD % {"kind": kind, "plural": plural, "singular": kind.lower()}


def ensure_crds(emu):
    for kind, plural in (("Installation", "installations"), ("TigeraStatus", "tigerastatuses")):
        obj = yaml.safe_load(crd(kind, plural))
        if emu.store.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", obj["metadata"]["name"]) is None:
            emu.store.put(obj)


def reset(emu, *refs):
    """Delete objects and wait until they are really gone (namespaces terminate asynchronously)."""
    for api_version, kind, name, ns in refs:
        emu.store.remove(api_version, kind, name, ns)
    deadline = time.monotonic() + 10
    for api_version, kind, name, ns in refs:
        while emu.store.get(api_version, kind, name, ns) is not None:
            assert time.monotonic() < deadline, f"{kind} {name} not deleted"
            time.sleep(0.02)


@pytest.fixture
def clean_app(emu):
    reset(emu, ("v1", "Namespace", "yaobank", None))
    yield
    reset(emu, ("v1", "Namespace", "yaobank", None))


# --- applied --------------------------------------------------------------------------------


def test_prepare_shows_diff_and_writes_nothing(lab, emu, clean_app, caplog):
    caplog.set_level(logging.INFO)
    run = Run(diff=True)
    meta = run.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    assert meta.will_change
    assert "--- live namespace/yaobank (absent: will create)" in caplog.text
    assert "yaobank: 3 of 3 object(s) will change: create namespace/yaobank, create serviceaccount/customer -n yaobank" in caplog.text
    assert emu.store.get("v1", "Namespace", "yaobank") is None
    assert emu.store.get("apps/v1", "Deployment", "customer", "yaobank") is None


def test_apply_in_order_then_no_change_then_diff_of_an_edit(lab, emu, clean_app, caplog):
    caplog.set_level(logging.INFO)
    order = []  # the order the API server saw the objects created in
    stop = emu.add_watcher(lambda event, obj: order.append(obj["kind"]) if event == "ADDED" and obj["kind"] in (
        "Namespace", "ServiceAccount", "Deployment") else None)
    run = Run(diff=True)
    meta = run.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    run.execute()
    assert ok(meta) and meta.did_change()
    deadline = time.monotonic() + 5
    while len(order) < 3 and time.monotonic() < deadline:  # watchers run on their own thread
        time.sleep(0.01)
    stop()
    assert order == ["Namespace", "ServiceAccount", "Deployment"]
    assert emu.store.get("apps/v1", "Deployment", "customer", "yaobank")["spec"]["replicas"] == 1
    assert caplog.text.count("--- live namespace/yaobank") == 1  # printed once per run
    assert "apply yaobank manifest: 3 created, 0 configured, 0 unchanged" in caplog.text

    caplog.clear()
    again = Run(diff=True)
    meta = again.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    assert not meta.will_change
    again.execute()
    assert ok(meta) and not meta.did_change()
    assert "yaobank: 3 object(s) unchanged" in caplog.text
    assert "--- live" not in caplog.text

    caplog.clear()
    edit = Run(diff=True)
    meta = edit.add(kubernetes.applied, manifest_yaml=app(replicas=2), lab=lab, manifest="yaobank")
    assert meta.will_change
    assert "--- live deployment.apps/customer -n yaobank\n+++ applied" in caplog.text
    assert "-  replicas: 1" in caplog.text and "+  replicas: 2" in caplog.text
    assert emu.store.get("apps/v1", "Deployment", "customer", "yaobank")["spec"]["replicas"] == 1  # dry
    assert "update deployment.apps/customer -n yaobank" in caplog.text


def test_crd_and_custom_object_in_one_manifest(lab, emu, caplog):
    """The kind is unknown in Prepare ("will create") and discovered after the CRD is applied."""
    reset(emu, ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "widgets.operator.tigera.io", None))
    manifest = "apiVersion: operator.tigera.io/v1\nkind: Widget\nmetadata: {name: w1}\n---\n" + crd("Widget", "widgets")
    run = Run()
    meta = run.add(kubernetes.applied, manifest_yaml=manifest, lab=lab, manifest="widgets")
    assert meta.will_change
    run.execute()
    assert ok(meta), caplog.text
    assert emu.store.get("operator.tigera.io/v1", "Widget", "w1") is not None


def kubectl_edit(emu, api_version, kind, name, namespace, patch, manager="kubectl-edit"):
    """What ``kubectl edit`` (or ``kubectl scale``: manager ``kubectl``) does: a plain update that makes
    ``manager`` the owner of the fields it changed."""
    emu.store.patch(emu.store.res(api_version, kind), namespace, name, patch, "merge", manager=manager)


@pytest.mark.parametrize("manager", ["kubectl-edit", "kubectl-client-side-apply", "kubectl"])
def test_a_field_changed_by_a_person_is_a_conflict_named_and_kept(lab, emu, clean_app, caplog, manager):
    caplog.set_level(logging.INFO)
    run = Run()
    run.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    run.execute()
    kubectl_edit(emu, "apps/v1", "Deployment", "customer", "yaobank", {"spec": {"replicas": 5}}, manager)
    caplog.clear()
    run = Run()
    meta = run.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    assert meta.will_change
    assert f'conflict with "{manager}"' in caplog.text  # said in the plan already
    run.execute()
    assert not ok(meta)
    assert "apply yaobank manifest (deployment.apps/customer -n yaobank) failed on @local" in caplog.text
    assert "Apply failed with 1 conflict" in caplog.text and ".spec.replicas" in caplog.text
    assert "--force-conflicts" in caplog.text  # the way to keep calicolab's value
    assert emu.store.get("apps/v1", "Deployment", "customer", "yaobank")["spec"]["replicas"] == 5


def test_the_operators_defaults_in_the_installation_are_taken_over(lab, emu, caplog):
    """The tigera-operator writes defaults back into the Installation (an update by "operator"): a changed
    setting in a field it wrote is applied anyway (forced), and calicolab owns the field again."""
    ensure_crds(emu)
    reset(emu, ("operator.tigera.io/v1", "Installation", "default", None))
    installation = ("apiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata: {name: default}\n"
                    "spec: {calicoNetwork: {bgp: %s}}\n")
    run = Run()
    run.add(kubernetes.applied, manifest_yaml=installation % "Enabled", lab=lab, manifest="installation")
    run.execute()
    kubectl_edit(emu, "operator.tigera.io/v1", "Installation", "default", None,
                 {"spec": {"calicoNetwork": {"bgp": "Disabled"}, "variant": "Calico"}}, manager="operator")
    run = Run()
    meta = run.add(kubernetes.applied, manifest_yaml=installation % "Enabled", lab=lab, manifest="installation")
    assert meta.will_change
    run.execute()
    assert ok(meta) and meta.did_change()
    live = emu.store.get("operator.tigera.io/v1", "Installation", "default")
    assert live["spec"] == {"calicoNetwork": {"bgp": "Enabled"}, "variant": "Calico"}  # the default stays
    owners = {m["manager"]: m["fieldsV1"] for m in live["metadata"]["managedFields"]}
    assert "f:bgp" in owners["calicolab"]["f:spec"]["f:calicoNetwork"]
    assert "f:calicoNetwork" not in owners["operator"]["f:spec"]


def test_api_down_over_reports_then_fails_cleanly(down_lab, caplog):
    caplog.set_level(logging.INFO)
    run = Run()
    meta = run.add(kubernetes.applied, manifest_yaml=app(), lab=down_lab, manifest="yaobank")
    assert meta.will_change
    assert ("API not reachable: 3 object(s) will be applied: namespace/yaobank, "
            "serviceaccount/customer -n yaobank, deployment.apps/customer -n yaobank") in caplog.text
    run.execute()
    assert not ok(meta)
    assert "apply yaobank manifest failed on @local: API not reachable from the workstation" in caplog.text
    assert "fallback `k3s kubectl` on @local (through the connector) does not answer" in caplog.text


# --- waits ------------------------------------------------------------------------------------


def put_deployment(emu, name, namespace="yaobank", status=None, replicas=1):
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": "x"}]}},
        },
    }
    if emu.store.get("v1", "Namespace", namespace) is None:
        emu.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    emu.store.remove("apps/v1", "Deployment", name, namespace)
    emu.store.put(dep)
    if status is not None:
        generation = emu.store.get("apps/v1", "Deployment", name, namespace)["metadata"].get("generation", 1)
        emu.store.patch_status("apps/v1", "Deployment", name, dict(status, observedGeneration=generation), namespace)


ROLLED = {"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1}


def test_rolled_out_noop_when_done(lab, emu, clean_app, caplog):
    caplog.set_level(logging.INFO)
    put_deployment(emu, "customer", status=ROLLED)
    run = Run()
    meta = run.add(kubernetes.rolled_out, namespace="yaobank", names=["customer"], lab=lab)
    assert not meta.will_change
    run.execute()
    assert ok(meta) and not meta.did_change()
    assert 'rolled out: customer' in caplog.text


def test_rolled_out_waits_until_controller_finishes(lab, emu, clean_app, caplog):
    caplog.set_level(logging.INFO)
    put_deployment(emu, "summary", status={"replicas": 2, "updatedReplicas": 2, "availableReplicas": 0}, replicas=2)
    run = Run()
    meta = run.add(kubernetes.rolled_out, namespace="yaobank", names=["summary"], timeout=5, lab=lab)
    assert meta.will_change
    timer = threading.Timer(0.5, lambda: emu.store.patch_status(
        "apps/v1", "Deployment", "summary", {"availableReplicas": 2}, "yaobank"))
    timer.start()
    run.execute()
    timer.join()
    assert ok(meta)
    assert 'Waiting for deployment "summary" rollout to finish: 0 of 2 updated replicas are available...' in caplog.text
    assert 'deployment "summary" successfully rolled out' in caplog.text


def test_rolled_out_progress_deadline_exceeded(lab, emu, clean_app, caplog):
    caplog.set_level(logging.INFO)
    put_deployment(emu, "database", status={
        "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "database-7d9" has timed out progressing.'}],
    })
    emu.store.put({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "database-7d9-x.1", "namespace": "yaobank"},
        "involvedObject": {"kind": "Pod", "name": "database-7d9-x", "namespace": "yaobank"},
        "type": "Warning", "reason": "Failed", "message": "Error: ImagePullBackOff",
    })
    run = Run()
    meta = run.add(kubernetes.rolled_out, namespace="yaobank", names=["database"], timeout=5, lab=lab)
    run.execute()
    assert not ok(meta)
    text = caplog.text
    assert 'error: deployment "database" exceeded its progress deadline' in text
    assert "Progressing=False (ProgressDeadlineExceeded" in text
    assert "Warning Failed pod/database-7d9-x: Error: ImagePullBackOff" in text


def test_rolled_out_timeout_names_object(lab, emu, clean_app, caplog):
    caplog.set_level(logging.INFO)
    put_deployment(emu, "customer")  # no controller: status never observed
    run = Run()
    meta = run.add(kubernetes.rolled_out, namespace="yaobank", names=["customer"], timeout=0.5, lab=lab)
    run.execute()
    assert not ok(meta)
    assert ("rollout of customer -n yaobank failed on @local: timed out waiting for the condition after 0.5s: "
            "Waiting for deployment spec update to be observed...\n  deployment/customer -n yaobank") in caplog.text
    assert "\nNext: `multipass exec control -- sudo k3s kubectl -n yaobank describe deployment customer`" in caplog.text


def test_crds_established_missing_crd(lab, emu, caplog):
    caplog.set_level(logging.INFO)
    run = Run()
    meta = run.add(kubernetes.crds_established, names=["nothings.operator.tigera.io"], timeout=0.5, lab=lab)
    assert meta.will_change
    run.execute()
    assert not ok(meta)
    assert "customresourcedefinition/nothings.operator.tigera.io does not exist yet" in caplog.text
    assert "timed out waiting for the condition" in caplog.text


def test_crds_established_noop(lab, emu, caplog):
    ensure_crds(emu)
    run = Run()
    meta = run.add(kubernetes.crds_established, names=["installations.operator.tigera.io", "tigerastatuses.operator.tigera.io"], lab=lab)
    assert not meta.will_change
    run.execute()
    assert ok(meta)


def set_tigerastatus(emu, conditions):
    ensure_crds(emu)
    emu.store.remove("operator.tigera.io/v1", "TigeraStatus", "calico")
    emu.store.put({"apiVersion": "operator.tigera.io/v1", "kind": "TigeraStatus", "metadata": {"name": "calico"},
                   "spec": {}, "status": {"conditions": conditions}})


def test_tigerastatus_degraded_fails_with_message(lab, emu, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(waits, "DEGRADED_GRACE", 0.3)
    set_tigerastatus(emu, [
        {"type": "Available", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Progressing", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Degraded", "status": "True", "reason": "PodFailure", "message": "Pod calico-system/calico-node-x has crash looping container: calico-node", "lastTransitionTime": "2026-01-01T00:00:00Z"},
    ])
    run = Run()
    meta = run.add(kubernetes.tigerastatus_available, status="calico", timeout=10, lab=lab)
    assert meta.will_change
    run.execute()
    assert not ok(meta)
    assert ("tigerastatus/calico Available failed on @local: tigerastatus/calico Degraded: PodFailure: "
            "Pod calico-system/calico-node-x has crash looping container: calico-node") in caplog.text


def test_tigerastatus_becomes_available(lab, emu, caplog):
    caplog.set_level(logging.INFO)
    set_tigerastatus(emu, [{"type": "Progressing", "status": "True", "reason": "ResourceNotReady", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    run = Run()
    meta = run.add(kubernetes.tigerastatus_available, status="calico", timeout=5, lab=lab)
    timer = threading.Timer(0.4, lambda: emu.store.patch_status("operator.tigera.io/v1", "TigeraStatus", "calico", {"conditions": [
        {"type": "Available", "status": "True", "reason": "AllObjectsAvailable", "lastTransitionTime": "2026-01-01T00:00:01Z"},
        {"type": "Progressing", "status": "False", "lastTransitionTime": "2026-01-01T00:00:01Z"}]}))
    timer.start()
    run.execute()
    timer.join()
    assert ok(meta), caplog.text
    assert "waiting for tigerastatus/calico Available" in caplog.text
    again = Run()
    assert not again.add(kubernetes.tigerastatus_available, status="calico", lab=lab).will_change


def test_tigerastatus_timeout(lab, emu, caplog):
    caplog.set_level(logging.INFO)
    ensure_crds(emu)
    emu.store.remove("operator.tigera.io/v1", "TigeraStatus", "calico")
    run = Run()
    meta = run.add(kubernetes.tigerastatus_available, status="calico", timeout=0.3, lab=lab)
    run.execute()
    assert not ok(meta)
    assert "tigerastatus/calico not Available; conditions: the object does not exist" in caplog.text


def put_node(emu, name, ready):
    emu.store.remove("v1", "Node", name)
    emu.store.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                   "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                              "reason": "KubeletReady" if ready else "KubeletNotReady",
                                              "message": "" if ready else "container runtime network not ready: cni plugin not initialized"}]}})


def test_nodes_ready_timeout_then_success(lab, emu, caplog):
    caplog.set_level(logging.INFO)
    for name in ("control", "node1", "node2"):
        emu.store.remove("v1", "Node", name)
    put_node(emu, "control", True)
    put_node(emu, "node1", False)
    run = Run()
    meta = run.add(kubernetes.nodes_ready, timeout=0.3, lab=lab)
    run.execute()
    assert not ok(meta)
    assert ("nodes not Ready: node1 (Ready=False: KubeletNotReady, container runtime network not ready: "
            "cni plugin not initialized); node2 (not registered)") in caplog.text

    put_node(emu, "node1", True)
    put_node(emu, "node2", True)
    run = Run()
    meta = run.add(kubernetes.nodes_ready, lab=lab)
    assert not meta.will_change
    run.execute()
    assert ok(meta)


def test_wait_ops_with_api_down_over_report_and_fail(down_lab, caplog):
    caplog.set_level(logging.INFO)
    run = Run()
    meta = run.add(kubernetes.nodes_ready, lab=down_lab)
    assert meta.will_change
    assert "API not reachable: will wait for nodes control, node1, node2 Ready" in caplog.text
    run.execute()
    assert not ok(meta)  # retried until the timeout: an API that does not answer may be restarting
    assert ("nodes control, node1, node2 Ready failed on @local: timed out waiting for the condition after 2s: "
            "API not reachable") in caplog.text


# --- one connection per run ------------------------------------------------------------------------


def test_a_run_connects_once_for_all_its_operations_in_planning_and_execution(lab, emu, clean_app, monkeypatch):
    probes = []  # TCP probes of API addresses: one per connection made
    guarded = kclient.tcp_answers
    monkeypatch.setattr(kclient, "tcp_answers", lambda url, timeout=kclient.PROBE_TIMEOUT: probes.append(url) or guarded(url))
    with FakeCluster(emu, nodes=[("control", "198.19.0.1")], nodes_ready="always", interval=0.02):
        run = Run()
        metas = [
            run.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank"),
            run.add(kubernetes.rolled_out, namespace="yaobank", names=["customer"], lab=lab, timeout=10),
            run.add(kubernetes.nodes_ready, names=["control"], lab=lab),
            run.add(kubernetes.applied, manifest_yaml=app(replicas=2), lab=lab, manifest="yaobank again"),
        ]
        run.execute()
    assert all(ok(meta) for meta in metas)
    assert probes == [f"https://127.0.0.1:{emu.port}"]


def test_an_api_down_in_planning_is_connected_to_in_execution(tmp_path, emu, clean_app):
    """Planning finds no kubeconfig yet (a lab from nothing); execution, after it appeared, connects."""
    lab = make_lab(tmp_path, emu.port)
    run = Run()
    meta = run.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    assert meta.will_change
    emu.write_kubeconfig(tmp_path / "kubeconfig.yaml")  # what the k3s phase does before this op runs
    run.execute()
    assert ok(meta) and emu.store.get("apps/v1", "Deployment", "customer", "yaobank") is not None


# --- watching: a change ends the pause -------------------------------------------------------------


@pytest.mark.parametrize("api_version, kind, namespace, change", [
    ("apps/v1", "Deployment", "yaobank",
     lambda emu: emu.store.patch_status("apps/v1", "Deployment", "customer", ROLLED, "yaobank")),
    ("v1", "Node", None, lambda emu: put_node(emu, "node9", True)),
    ("operator.tigera.io/v1", "TigeraStatus", None, lambda emu: set_tigerastatus(emu, [])),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", None,
     lambda emu: emu.store.put(yaml.safe_load(crd("Gizmo", "gizmos")))),
])
def test_a_watched_change_ends_the_pause(lab, emu, clean_app, api_version, kind, namespace, change):
    """wait_for_change says whether it saw a change (True) or ran out of time (False): after a change
    since the listed version it returns True, so the next probe runs at once instead of after the pause."""
    ensure_crds(emu)
    run = Run()
    run.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    run.execute()
    api = kclient.connect(lab)
    try:
        _, version = api.snapshot(api_version, kind, namespace)
        assert version
        assert api.wait_for_change(api_version, kind, namespace, version, 0.2) is False  # nothing changed
        change(emu)
        assert api.wait_for_change(api_version, kind, namespace, version, 30) is True
        # the watch left its stream unread: the connection that comes next still answers
        assert api.snapshot(api_version, kind, namespace)[1]
    finally:
        api.close()
        reset(emu, ("v1", "Node", "node9", None),
              ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "gizmos.operator.tigera.io", None))


# --- TLS name when the address is not the kubeconfig's -------------------------------------------


def test_connects_through_management_ip_with_tls_name(tmp_path):
    with Emulator(san_ips=[], san_dns=["kubernetes"]) as emulator:
        emulator.write_kubeconfig(tmp_path / "kubeconfig.yaml", server=f"https://localhost:{closed_port()}")
        lab = make_lab(tmp_path, emulator.port)
        with kclient.connect(lab) as api:
            assert api.description == f"https://127.0.0.1:{emulator.port} (direct, TLS name kubernetes)"
            assert api.get("v1", "Namespace", "nope") is None


def test_tls_is_verified(tmp_path):
    """Same emulator, certificate without the address or the name kubernetes: refused."""
    with Emulator(san_ips=[], san_dns=["elsewhere"]) as emulator:
        emulator.write_kubeconfig(tmp_path / "kubeconfig.yaml", server=f"https://localhost:{closed_port()}")
        with pytest.raises(kclient.ApiUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            kclient.connect(make_lab(tmp_path, emulator.port))


def test_the_client_key_is_not_left_on_disk(tmp_path, monkeypatch, emu):
    """Python's ssl loads a client certificate from files only: the key goes into a private folder that
    is gone again once the connection is made (the official client kept such files for the whole run)."""
    scratch = tmp_path / "tmp"
    state = tmp_path / "state"
    scratch.mkdir()
    state.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    made = []
    real_load = __import__("ssl").SSLContext.load_cert_chain

    def spy(context, certfile, keyfile=None, password=None):
        made.append((Path(certfile), Path(keyfile), oct(Path(keyfile).stat().st_mode & 0o777),
                     oct(Path(keyfile).parent.stat().st_mode & 0o777)))
        return real_load(context, certfile, keyfile, password)

    monkeypatch.setattr("ssl.SSLContext.load_cert_chain", spy)
    emu.write_kubeconfig(state / "kubeconfig.yaml")
    with kclient.connect(make_lab(state, emu.port)) as api:
        assert api.get("v1", "Namespace", "default")["metadata"]["name"] == "default"
    assert [(mode, folder_mode) for _, _, mode, folder_mode in made] == [("0o600", "0o700")]
    assert made[0][1].is_relative_to(scratch) and list(scratch.iterdir()) == []


# --- the k3s kubectl fallback, with a real kubectl against the emulator -----------------------------


class KubectlHost:
    """Stands in for control: runs `k3s kubectl ...` as the venv's kubectl with the test kubeconfig."""

    name = "control"

    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig
        self.commands = []

    def run_shell_command(self, command, print_output=False, print_input=False, **kwargs):
        text = command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)
        self.commands.append(text)
        assert text.startswith("k3s kubectl ") and kwargs.get("_sudo") and kwargs.get("_timeout")
        argv = f"kubectl --kubeconfig {self.kubeconfig} " + text[len("k3s kubectl "):]
        proc = subprocess.run(argv, shell=True, input=kwargs.get("_stdin"), capture_output=True, text=True, timeout=60)
        ok = proc.returncode in kwargs.get("_success_exit_codes", [0])
        return ok, SimpleNamespace(stdout=proc.stdout.rstrip("\n"), stderr=proc.stderr.rstrip("\n"))


KUBECTL = Path(__import__("sys").executable).with_name("kubectl")


@pytest.mark.kubectl
@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl not installed")
def test_fallback_plan_apply_and_get_with_real_kubectl(tmp_path, emu, clean_app, monkeypatch):
    monkeypatch.setenv("PATH", f"{KUBECTL.parent}:" + __import__("os").environ["PATH"])
    kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig.yaml")
    api = kclient.KubectlApi(KubectlHost(kubeconfig))
    api.check()
    objects = kapply.parse_manifest(app())
    assert [p.action for p in kapply.plan_apply(api, objects)] == ["create", "create", "create"]
    result = kapply.apply_objects(api, objects)
    assert result.summary() == "3 created, 0 configured, 0 unchanged"
    assert [p.action for p in kapply.plan_apply(api, objects)] == ["unchanged"] * 3
    plans = kapply.plan_apply(api, kapply.parse_manifest(app(replicas=3)))
    assert [p.action for p in plans] == ["unchanged", "unchanged", "update"]
    assert "+  replicas: 3" in plans[2].diff
    assert api.get("apps/v1", "Deployment", "customer", "yaobank")["spec"]["replicas"] == 1


# --- HTTP answer check (curl from the host, here @local against 127.0.0.1) --------------------------


@pytest.fixture
def web():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><h1>Welcome to YAO Bank</h1></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_http_answers_noop_when_answering(web, lab):
    run = Run()
    meta = run.add(kubernetes.http_answers, url=web, expect="Welcome to YAO Bank", timeout=2)
    assert not meta.will_change
    run.execute()
    assert ok(meta) and not meta.did_change()


def test_http_answers_wrong_page_times_out(web, caplog):
    caplog.set_level(logging.INFO)
    run = Run()
    meta = run.add(kubernetes.http_answers, url=web, expect="Spike Curtis", timeout=0.5)
    assert meta.will_change
    run.execute()
    assert not ok(meta)
    assert f"check {web} answers failed on @local: timed out waiting for the condition" in caplog.text
    assert "answered without 'Spike Curtis'" in caplog.text


def test_http_answers_nothing_listening(caplog):
    caplog.set_level(logging.INFO)
    url = f"http://127.0.0.1:{closed_port()}/"
    run = Run()
    meta = run.add(kubernetes.http_answers, url=url, expect="YAO Bank", timeout=0.3)
    run.execute()
    assert not ok(meta)
    assert "curl " + url in caplog.text


# --- the fallback through a real connector: @local with stand-in `sudo` and `k3s` on PATH ----------

FAKE_SUDO = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -u) shift 2 ;; --) shift; break ;; -*) shift ;; *) break ;; esac
done
exec "$@"
"""

FAKE_K3S = """#!/bin/sh
[ "$1" = kubectl ] && shift
exec %(kubectl)s --kubeconfig "$FAKE_K3S_KUBECONFIG" "$@"
"""


@pytest.mark.kubectl
@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl not installed")
def test_ops_fall_back_to_k3s_kubectl_through_the_connector(tmp_path, emu, clean_app, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text(FAKE_SUDO)
    (bin_dir / "k3s").write_text(FAKE_K3S % {"kubectl": KUBECTL})
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:" + __import__("os").environ["PATH"])
    monkeypatch.setenv("FAKE_K3S_KUBECONFIG", str(emu.write_kubeconfig(tmp_path / "k3s.yaml")))
    # the workstation's kubeconfig points nowhere that answers
    state_dir = tmp_path / "state"
    port = closed_port()
    emu.write_kubeconfig(state_dir / "kubeconfig.yaml", server=f"https://127.0.0.1:{port}")
    lab = make_lab(state_dir, port)

    run = Run(diff=True)
    meta = run.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    assert meta.will_change
    assert "using `k3s kubectl` on @local (through the connector)" in caplog.text
    assert "--- live namespace/yaobank (absent: will create)" in caplog.text
    run.execute()
    assert ok(meta), caplog.text
    assert "apply yaobank manifest: 3 created, 0 configured, 0 unchanged" in caplog.text
    assert caplog.text.count("using `k3s kubectl` on @local") == 1  # chosen once, said once, in plan and run
    assert emu.store.get("apps/v1", "Deployment", "customer", "yaobank")["metadata"]["managedFields"][0]["manager"] == "calicolab"

    emu.store.patch_status("apps/v1", "Deployment", "customer", dict(ROLLED, observedGeneration=1), "yaobank")
    again = Run()
    applied_meta = again.add(kubernetes.applied, manifest_yaml=app(), lab=lab, manifest="yaobank")
    rolled_meta = again.add(kubernetes.rolled_out, namespace="yaobank", names=["customer"], lab=lab)
    assert not applied_meta.will_change and not rolled_meta.will_change
