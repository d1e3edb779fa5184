"""Tests of the Kubernetes API emulator (tests/support/kubeapi) with the official client, DynamicClient and
real kubectl. Everything binds and connects to 127.0.0.1 only."""
from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError

from tests.support.kubeapi import ApiError, Emulator
from tests.support.kubeapi.controllers import FakeCluster, operator_crds

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = shutil.which("kubectl") or (shutil.which("kubectl", path=os.path.dirname(sys.executable)))
pytestmark = pytest.mark.timeout(60)

DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
          "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                   "template": {"metadata": {"labels": {"app": "web"}},
                                "spec": {"containers": [{"name": "web", "image": "nginx:1.25",
                                                         "env": [{"name": "A", "value": "1"}]}]}}}}
CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
       "metadata": {"name": "widgets.example.com"},
       "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
                "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                              "schema": {"openAPIV3Schema": {"type": "object",
                                                             "x-kubernetes-preserve-unknown-fields": True}}}]}}


def _start(request, **kw) -> Emulator:
    emu = Emulator(host="127.0.0.1", port=0, **kw)
    request.addfinalizer(emu.stop)
    return emu.start()


@pytest.fixture
def emu(request):
    return _start(request, tls=False)


@pytest.fixture
def api(emu):
    cfg = client.Configuration(host=emu.url)
    with client.ApiClient(cfg) as c:
        yield c


@pytest.fixture
def dyn(api):
    return DynamicClient(api)


def _raw(emu, method, path, body=None, ctype="application/json"):
    req = urllib.request.Request(emu.url + path, method=method, data=None if body is None else
                                 (body if isinstance(body, bytes) else json.dumps(body).encode()),
                                 headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---- discovery ---------------------------------------------------------------------------------

def test_discovery_with_official_client_and_trailing_slashes(emu, api):
    assert client.VersionApi(api).get_code().git_version.startswith("v1.")
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "rbac.authorization.k8s.io", "apiextensions.k8s.io"} <= groups
    res = {r.name: r for r in client.AppsV1Api(api).get_api_resources().resources}
    assert res["deployments"].kind == "Deployment" and res["deployments"].namespaced
    assert "deploy" in res["deployments"].short_names and "deployments/status" in res
    for path in ("/version/", "/api/", "/apis/", "/apis/apps", "/apis/apps/", "/apis/apps/v1/", "/api/v1/"):
        code, body = _raw(emu, "GET", path)
        assert code == 200, path
    code, body = _raw(emu, "GET", "/api/v1")
    assert body["groupVersion"] == "v1"
    ns = next(r for r in body["resources"] if r["name"] == "namespaces")
    assert ns["namespaced"] is False and "ns" in ns["shortNames"]
    assert _raw(emu, "GET", "/apis/nope.example.com/v1")[0] == 404
    code, root = _raw(emu, "GET", "/openapi/v3")
    assert code == 200 and "apis/apps/v1" in root["paths"]


# ---- CRUD ----------------------------------------------------------------------------------------

def test_crud_status_codes_and_metadata(emu, api, dyn):
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    _, code, _ = core.create_namespace_with_http_info({"metadata": {"name": "demo"}})
    assert code == 201
    with pytest.raises(client.ApiException) as e:
        core.create_namespace({"metadata": {"name": "demo"}})
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(client.ApiException) as e:
        core.read_namespaced_config_map("missing", "demo")
    assert e.value.status == 404 and json.loads(e.value.body)["kind"] == "Status"
    with pytest.raises(client.ApiException) as e:   # namespaced object in a missing namespace
        core.create_namespaced_config_map("nowhere", {"metadata": {"name": "x"}})
    assert e.value.status == 404
    with pytest.raises(client.ApiException) as e:
        core.create_namespaced_service("demo", {"metadata": {"name": "bad"}, "spec": {
            "type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}})
    assert e.value.status == 422 and "30000-32767" in json.loads(e.value.body)["message"]
    bad = json.loads(json.dumps(DEPLOY))
    del bad["spec"]["selector"]
    with pytest.raises(Exception) as e:       # DynamicClient: dict bodies skip client-side validation
        dyn.resources.get(api_version="apps/v1", kind="Deployment").create(body=bad, namespace="demo")
    body = e.value.body.decode() if isinstance(e.value.body, bytes) else e.value.body
    assert e.value.status == 422 and "spec.selector: Required value" in body

    d = apps.create_namespaced_deployment("demo", DEPLOY)
    assert d.metadata.uid and d.metadata.creation_timestamp and d.metadata.generation == 1
    rv1 = int(d.metadata.resource_version)
    svc = core.create_namespaced_service("demo", {"metadata": {"name": "web"}, "spec": {
        "type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    assert svc.spec.cluster_ip.startswith("198.19.3") and 30000 <= svc.spec.ports[0].node_port <= 32767
    assert int(svc.metadata.resource_version) > rv1

    cms = [{"metadata": {"name": f"cm{i}", "labels": {"tier": t}}} for i, t in enumerate(["a", "b", "c"])]
    for cm in cms:
        core.create_namespaced_config_map("demo", cm)
    names = lambda lst: sorted(i.metadata.name for i in lst.items)  # noqa: E731
    assert names(core.list_namespaced_config_map("demo", label_selector="tier=a")) == ["cm0"]
    assert names(core.list_namespaced_config_map("demo", label_selector="tier!=a")) == ["cm1", "cm2"]
    assert names(core.list_namespaced_config_map("demo", label_selector="tier in (a,c)")) == ["cm0", "cm2"]
    assert names(core.list_namespaced_config_map("demo", label_selector="tier notin (a,c)")) == ["cm1"]
    assert names(core.list_namespaced_config_map("demo", label_selector="tier")) == ["cm0", "cm1", "cm2"]
    assert names(core.list_namespaced_config_map("demo", field_selector="metadata.name=cm1")) == ["cm1"]
    lst = dyn.resources.get(api_version="v1", kind="ConfigMap").get(namespace="demo")
    assert lst.kind == "ConfigMapList" and lst.apiVersion == "v1" and int(lst.metadata.resourceVersion) > 0
    assert len(core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=demo").items) == 3

    cm = core.read_namespaced_config_map("cm0", "demo")
    cm.data = {"k": "v"}
    assert core.replace_namespaced_config_map("cm0", "demo", cm).data == {"k": "v"}
    cm.data = {"k": "stale"}
    with pytest.raises(client.ApiException) as e:    # stale resourceVersion
        core.replace_namespaced_config_map("cm0", "demo", cm)
    assert e.value.status == 409
    core.delete_namespaced_config_map("cm2", "demo")
    assert names(core.list_namespaced_config_map("demo")) == ["cm0", "cm1"]
    core.delete_namespace("demo")
    assert core.read_namespace("demo").status.phase == "Terminating"
    with pytest.raises(client.ApiException) as e:
        core.create_namespaced_config_map("demo", {"metadata": {"name": "late"}})
    assert e.value.status == 403
    _wait_for(lambda: not [n for n in core.list_namespace().items if n.metadata.name == "demo"])   # cascade
    assert core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=demo").items == []
    assert apps.list_deployment_for_all_namespaces().items == []


def test_patch_flavours(emu, api):
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", DEPLOY)
    d = apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {"spec": {"containers": [
        {"name": "web", "env": [{"name": "B", "value": "2"}]}]}}}})        # strategic merge by default
    c = d.spec.template.spec.containers[0]
    assert c.image == "nginx:1.25" and [e.name for e in c.env] == ["A", "B"] and d.metadata.generation == 2
    code, body = _raw(emu, "PATCH", "/apis/apps/v1/namespaces/default/deployments/web",
                      {"metadata": {"labels": {"x": "y"}}}, "application/merge-patch+json")
    assert code == 200 and body["metadata"]["labels"] == {"app": "web", "x": "y"}
    assert body["metadata"]["generation"] == 2           # metadata changes do not bump generation
    code, body = _raw(emu, "PATCH", "/apis/apps/v1/namespaces/default/deployments/web",
                      [{"op": "replace", "path": "/spec/replicas", "value": 5}], "application/json-patch+json")
    assert code == 200 and body["spec"]["replicas"] == 5 and body["metadata"]["generation"] == 3


# ---- server-side apply ---------------------------------------------------------------------------

def test_server_side_apply_create_idempotent_dryrun_conflicts(emu, dyn):
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    cfg = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "default",
                                                                   "labels": {"a": "1"}}, "data": {"x": "1", "y": "2"}}
    ssa = lambda body, **kw: cms.server_side_apply(body=body, **kw).to_dict()  # noqa: E731
    first = ssa(cfg, field_manager="calicolab")
    assert first["data"] == {"x": "1", "y": "2"}
    mf = first["metadata"]["managedFields"][0]
    assert (mf["manager"], mf["operation"]) == ("calicolab", "Apply") and mf["time"]
    assert mf["fieldsV1"]["f:data"] == {"f:x": {}, "f:y": {}}
    again = ssa(cfg, field_manager="calicolab")
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    rv_before = emu.store.rv
    dry = ssa(dict(cfg, data={"x": "9"}), field_manager="calicolab", dry_run="All")
    assert dry["data"] == {"x": "9"}                      # y dropped from the applied config -> removed
    assert emu.store.get("v1", "ConfigMap", "cfg", "default")["data"] == {"x": "1", "y": "2"}
    assert emu.store.rv == rv_before
    new = ssa({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new", "namespace": "default"}},
              field_manager="calicolab", dry_run="All")
    assert new["metadata"]["name"] == "new" and emu.store.get("v1", "ConfigMap", "new", "default") is None
    with pytest.raises(ConflictError) as e:
        ssa(dict(cfg, data={"x": "other"}), field_manager="someone-else")
    body = json.loads(e.value.body)
    assert body["reason"] == "Conflict" and ".data.x" in body["message"] and '"calicolab"' in body["message"]
    forced = ssa(dict(cfg, data={"x": "other"}), field_manager="someone-else", force_conflicts=True)
    assert forced["data"] == {"x": "other", "y": "2"}
    owners = {m["manager"]: m["fieldsV1"] for m in forced["metadata"]["managedFields"]}
    assert owners["calicolab"]["f:data"] == {"f:y": {}} and owners["someone-else"]["f:data"] == {"f:x": {}}
    code, status = _raw(emu, "PATCH", "/api/v1/namespaces/default/configmaps/cfg", b"apiVersion: v1\nkind: "
                        b"ConfigMap\nmetadata: {name: cfg}\n", "application/apply-patch+yaml")
    assert code == 400 and "fieldManager" in status["message"]
    code, obj = _raw(emu, "PATCH", "/api/v1/namespaces/default/configmaps/yml?fieldManager=t", b"apiVersion: v1\n"
                     b"kind: ConfigMap\nmetadata: {name: yml}\ndata: {k: v}\n", "application/apply-patch+yaml")
    assert code == 201 and obj["data"] == {"k": "v"}



@pytest.mark.parametrize("manager, change", [
    ("kubectl-edit", lambda emu: _raw(emu, "PATCH", "/apis/apps/v1/namespaces/default/deployments/web"
                                      "?fieldManager=kubectl-edit", {"spec": {"replicas": 3}},
                                      "application/merge-patch+json")),
    ("kubectl", lambda emu: _raw(emu, "PATCH", "/apis/apps/v1/namespaces/default/deployments/web/scale"
                                 "?fieldManager=kubectl", {"spec": {"replicas": 3}},
                                 "application/merge-patch+json")),
])
def test_server_side_apply_conflicts_with_update_managers_by_default(emu, dyn, manager, change):
    """Like a real API server: a field another manager changed by a plain update (``kubectl edit``,
    ``kubectl scale``) is a 409 for an apply that sets another value; ``force`` takes it over."""
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    applied = dict(DEPLOY, metadata=dict(DEPLOY["metadata"], namespace="default"))
    deployments.server_side_apply(body=applied, field_manager="calicolab")
    code, _ = change(emu)
    assert code == 200
    with pytest.raises(ConflictError) as e:
        deployments.server_side_apply(body=applied, field_manager="calicolab")
    body = json.loads(e.value.body)
    assert f'conflict with "{manager}"' in body["message"] and ".spec.replicas" in body["message"]
    assert [c["field"] for c in body["details"]["causes"]] == [".spec.replicas"]
    assert emu.store.get("apps/v1", "Deployment", "web", "default")["spec"]["replicas"] == 3
    same = dict(applied, spec=dict(applied["spec"], replicas=3))   # the same value is shared, no conflict
    assert deployments.server_side_apply(body=same, field_manager="calicolab").spec.replicas == 3
    forced = deployments.server_side_apply(body=applied, field_manager="calicolab", force_conflicts=True).to_dict()
    assert forced["spec"]["replicas"] == 2
    owners = {m["manager"]: m["fieldsV1"] for m in forced["metadata"]["managedFields"]}
    assert "f:replicas" in owners["calicolab"]["f:spec"]
    assert "f:replicas" not in (owners.get(manager) or {}).get("f:spec", {})



def test_server_side_apply_drops_list_items_whose_key_changed(emu, dyn):
    """Renaming the keyed item of a list removes the old item whole (its key field and all), however the
    removed paths happen to be ordered."""
    emu.store.put(operator_crds()[0])
    installations = _wait_for(lambda: dyn.resources.get(api_version="operator.tigera.io/v1", kind="Installation"))
    for index in range(20):
        pools = [{"name": f"pool-{index}", "cidr": f"10.{index}.0.0/16", "natOutgoing": "Enabled"}]
        body = {"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "metadata": {"name": "default"},
                "spec": {"calicoNetwork": {"ipPools": pools}}}
        applied = installations.server_side_apply(body=body, field_manager="calicolab").to_dict()
        assert applied["spec"]["calicoNetwork"]["ipPools"] == pools, index

def test_finalizers_delay_deletion_and_scale_subresource(emu, api):
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespaced_config_map("default", {"metadata": {"name": "f", "finalizers": ["example.com/x"]}})
    core.delete_namespaced_config_map("f", "default")
    assert core.read_namespaced_config_map("f", "default").metadata.deletion_timestamp
    core.patch_namespaced_config_map("f", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(client.ApiException) as e:
        core.read_namespaced_config_map("f", "default")
    assert e.value.status == 404
    apps.create_namespaced_deployment("default", DEPLOY)
    assert apps.read_namespaced_deployment_scale("web", "default").spec.replicas == 2
    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}})
    d = apps.read_namespaced_deployment("web", "default")
    assert d.spec.replicas == 4 and d.metadata.generation == 2


def test_dry_run_on_every_write(emu, api):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", {"metadata": {"name": "keep"}, "data": {"a": "1"}})
    rv = emu.store.rv
    core.create_namespaced_config_map("default", {"metadata": {"name": "ghost"}}, dry_run="All")
    core.patch_namespaced_config_map("keep", "default", {"data": {"a": "2"}}, dry_run="All")
    cm = core.read_namespaced_config_map("keep", "default")
    cm.data = {"a": "3"}
    assert core.replace_namespaced_config_map("keep", "default", cm, dry_run="All").data == {"a": "3"}
    core.delete_namespaced_config_map("keep", "default", dry_run="All")
    assert emu.store.rv == rv
    assert core.read_namespaced_config_map("keep", "default").data == {"a": "1"}
    assert emu.store.get("v1", "ConfigMap", "ghost", "default") is None


def test_status_subresource_isolation_and_generation(emu, api):
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", dict(DEPLOY, status={"replicas": 99}))
    d = apps.read_namespaced_deployment("web", "default")
    assert d.status is None or not d.status.replicas          # status dropped on create
    out = apps.patch_namespaced_deployment_status("web", "default", {"spec": {"replicas": 7}, "status": {
        "observedGeneration": 1, "replicas": 2, "availableReplicas": 2}})
    assert out.spec.replicas == 2 and out.status.available_replicas == 2 and out.metadata.generation == 1
    d = apps.read_namespaced_deployment("web", "default")
    d.status.available_replicas = 0
    d.spec.replicas = 3
    out = apps.replace_namespaced_deployment("web", "default", d)
    assert out.status.available_replicas == 2 and out.spec.replicas == 3 and out.metadata.generation == 2
    out = apps.patch_namespaced_deployment("web", "default", {"metadata": {"annotations": {"a": "b"}}})
    assert out.metadata.generation == 2


def test_a_node_keeps_the_status_it_is_created_with_but_an_update_does_not_change_it(emu, api):
    # what the kubelet relies on when it registers: its addresses arrive with the Node itself
    core = client.CoreV1Api(api)
    core.create_node({"metadata": {"name": "n1"}, "status": {
        "addresses": [{"type": "InternalIP", "address": "203.0.113.7"}]}})
    node = core.read_node("n1")
    assert [(a.type, a.address) for a in node.status.addresses] == [("InternalIP", "203.0.113.7")]
    node.status.addresses = []
    core.replace_node("n1", node)
    assert core.read_node("n1").status.addresses[0].address == "203.0.113.7"


def test_a_status_write_against_an_old_version_is_refused_so_a_controller_cannot_lose_a_kubelets_write(emu, api):
    core = client.CoreV1Api(api)
    core.create_node({"metadata": {"name": "n1"}, "status": {"conditions": []}})
    read = emu.store.get("v1", "Node", "n1")          # what a controller listed
    core.patch_node_status("n1", {"status": {"addresses": [{"type": "InternalIP", "address": "203.0.113.7"}]}})
    with pytest.raises(ApiError) as refused:
        emu.store.set_status("v1", "Node", "n1", {"conditions": []},
                             resource_version=read["metadata"]["resourceVersion"])
    assert refused.value.code == 409
    assert core.read_node("n1").status.addresses[0].address == "203.0.113.7"


# ---- CRDs ------------------------------------------------------------------------------------

def test_crd_registration_then_custom_objects(emu, api, dyn):
    ext, co = client.ApiextensionsV1Api(api), client.CustomObjectsApi(api)
    ext.create_custom_resource_definition(CRD)
    crd = ext.read_custom_resource_definition("widgets.example.com")
    conds = {c.type: c.status for c in crd.status.conditions}
    assert conds == {"NamesAccepted": "True", "Established": "True"}
    res = {r.name: r for r in client.ApisApi(api).get_api_versions().groups}
    assert "example.com" in res
    co.create_namespaced_custom_object("example.com", "v1", "default", "widgets",
                                       {"apiVersion": "example.com/v1", "kind": "Widget",
                                        "metadata": {"name": "w1"}, "spec": {"size": 1}})
    with pytest.raises(client.ApiException) as e:
        co.create_namespaced_custom_object("example.com", "v1", "default", "widgets",
                                           {"apiVersion": "example.com/v1", "kind": "Widget",
                                            "metadata": {"name": "w1"}})
    assert e.value.status == 409
    co.patch_namespaced_custom_object_status("example.com", "v1", "default", "widgets", "w1",
                                             {"status": {"ok": True}, "spec": {"size": 5}})
    w = co.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w1")
    assert w["status"] == {"ok": True} and w["spec"] == {"size": 1} and w["metadata"]["generation"] == 1
    widgets = dyn.resources.get(api_version="example.com/v1", kind="Widget")
    widgets.server_side_apply(body={"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {
        "name": "w2", "namespace": "default"}, "spec": {"size": 2}}, field_manager="t")
    lst = co.list_namespaced_custom_object("example.com", "v1", "default", "widgets")
    assert lst["kind"] == "WidgetList" and sorted(i["metadata"]["name"] for i in lst["items"]) == ["w1", "w2"]
    ext.delete_custom_resource_definition("widgets.example.com")
    assert _raw(emu, "GET", "/apis/example.com/v1/namespaces/default/widgets")[0] == 404


def test_crd_established_can_be_delayed_or_omitted(request):
    emu = _start(request, tls=False, crd_established_delay=None)
    emu.store.put(CRD)
    conds = {c["type"]: c["status"] for c in emu.store.get(CRD["apiVersion"], CRD["kind"], CRD["metadata"]["name"])
             ["status"]["conditions"]}
    assert conds == {"NamesAccepted": "True", "Established": "False"}
    emu.store.crd_established_delay = 0.2
    emu.store.put(operator_crds()[1])
    ts = emu.store.get(CRD["apiVersion"], CRD["kind"], "tigerastatuses.operator.tigera.io")
    assert {c["type"]: c["status"] for c in ts["status"]["conditions"]}["Established"] == "False"  # not yet
    _wait_for(lambda: {c["type"]: c["status"] for c in emu.store.get(
        CRD["apiVersion"], CRD["kind"], "tigerastatuses.operator.tigera.io")["status"]["conditions"]}["Established"] == "True")


# ---- watch ---------------------------------------------------------------------------------------

def test_watch_events_resource_version_selectors_and_timeout(emu, api):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", {"metadata": {"name": "before", "labels": {"w": "1"}}})
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"name": "c1", "labels": {"w": "1"}}})
    core.create_namespaced_config_map("default", {"metadata": {"name": "other"}})
    core.patch_namespaced_config_map("c1", "default", {"data": {"a": "b"}})
    core.delete_namespaced_config_map("c1", "default")
    # the changes since rv are replayed, then the server ends the stream at timeoutSeconds (else: no list)
    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_config_map, "default", label_selector="w=1", resource_version=rv, timeout_seconds=1)]
    assert events == [("ADDED", "c1"), ("MODIFIED", "c1"), ("DELETED", "c1")]
    initial = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_config_map, "default", field_selector="metadata.name=before", timeout_seconds=1)]
    assert initial == [("ADDED", "before")]          # no resourceVersion: current state first


def test_stop_does_not_hang_with_open_watch(request):
    emu = _start(request, tls=False)
    api = client.ApiClient(client.Configuration(host=emu.url))
    request.addfinalizer(api.close)
    got = []
    t = threading.Thread(target=lambda: got.extend(watch.Watch().stream(
        client.CoreV1Api(api).list_namespace, timeout_seconds=300)), daemon=True)
    t.start()
    _wait_for(lambda: len(got) == 4)  # the watch is open: the current namespaces arrived
    emu.stop()
    t.join(30)
    assert not t.is_alive() and len(got) == 4


def test_store_api_and_watchers(emu):
    seen = []
    emu.add_watcher(lambda typ, obj: seen.append((typ, obj["kind"], obj["metadata"]["name"])),
                    api_version="v1", kind="ConfigMap")
    emu.store.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "namespace": "default"}})
    emu.store.patch_obj("v1", "ConfigMap", "s", {"data": {"a": "1"}}, "default")
    assert emu.store.list("v1", "ConfigMap", "default", label_selector="x") == []
    assert emu.store.remove("v1", "ConfigMap", "s", "default")["metadata"]["name"] == "s"
    with pytest.raises(ApiError):
        emu.store.res("v1", "Nope")
    deadline = time.monotonic() + 2
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == [("ADDED", "ConfigMap", "s"), ("MODIFIED", "ConfigMap", "s"), ("DELETED", "ConfigMap", "s")]


# ---- TLS -----------------------------------------------------------------------------------------

def test_mtls_kubeconfig_and_rejections(request, tmp_path):
    emu = _start(request, tls=True, tokens=["agent-token"])
    kc = emu.write_kubeconfig(tmp_path / "kubeconfig.yaml")
    assert kc.stat().st_mode & 0o777 == 0o600
    doc = yaml.safe_load(kc.read_text())
    assert doc["current-context"] == "default" and doc["clusters"][0]["name"] == "default"
    assert {"client-certificate-data", "client-key-data"} <= set(doc["users"][0]["user"])
    with config.new_client_from_config(str(kc)) as c:
        assert client.CoreV1Api(c).read_namespace("default").metadata.name == "default"
    ctx = ssl.create_default_context(cadata=emu.pki.server_ca_pem.decode())

    def get(headers=None):
        req = urllib.request.Request(emu.url + "/api/v1/namespaces", headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    assert get() == 401
    assert get({"Authorization": "Bearer wrong"}) == 401
    assert get({"Authorization": "Bearer agent-token"}) == 200
    other = Emulator(tls=True)     # a client certificate from a foreign CA must not get in
    bad = tmp_path / "bad.pem"
    bad.write_bytes(other.pki.admin_cert.read_bytes() + other.pki.admin_key.read_bytes())
    ctx.load_cert_chain(bad)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get()


def test_cli_serve_reuses_ca_and_stops_on_sigterm(tmp_path):
    tls, ready, kc, log = tmp_path / "tls", tmp_path / "ready", tmp_path / "kc.yaml", tmp_path / "serve.log"
    (tmp_path / "token").write_text("K10abc::server:s3cret\n")

    def serve(step):
        with open(log, "w") as err:
            p = subprocess.Popen([sys.executable, "-m", "tests.support.kubeapi", "serve", "--host", "127.0.0.1",
                                  "--port", "0", "--tls-dir", str(tls), "--san-ip", "127.0.0.1", "--san-dns",
                                  "localhost", "--token-file", str(tmp_path / "token"), "--kubeconfig-out", str(kc),
                                  "--ready-file", str(ready), "--state-file", str(tmp_path / "state.json"),
                                  "--controllers",
                                  "tests.support.kubeapi.controllers:start"], cwd=ROOT, stderr=err)
        try:
            deadline = time.monotonic() + 20
            while not ready.exists():
                assert p.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            url = ready.read_text().split()[0]
            assert kc.stat().st_mode & 0o777 == 0o600
            with config.new_client_from_config(str(kc)) as c:
                core = client.CoreV1Api(c)
                nodes = [n.metadata.name for n in core.list_node().items]
                step(core)
            assert url.startswith("https://127.0.0.1:") and nodes == ["control", "node1", "node2"]
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                raise
        assert rc == 0 and not ready.exists(), log.read_text()
        return (tls / "server-ca.crt").read_bytes()
    def first(core):
        core.create_namespaced_config_map("default", {"metadata": {"name": "persisted"}, "data": {"a": "1"}})

    def second(core):     # a restart keeps the state (like k3s's datastore)
        assert core.read_namespaced_config_map("persisted", "default").data == {"a": "1"}
    assert serve(first) == serve(second)


# ---- fake controllers ------------------------------------------------------------------------------

def _operator(emu):
    emu.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tigera-operator"}})
    d = json.loads(json.dumps(DEPLOY))
    d["metadata"] = {"name": "tigera-operator", "namespace": "tigera-operator"}
    emu.store.put(d)


def _wait_for(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := fn():
            return v
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def _conds(obj):
    return {c["type"]: c["status"] for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def test_fake_cluster_operator_flow_and_failures(request, emu):
    cluster = FakeCluster(emu, nodes=[("control", "198.19.0.1"), ("node1", "198.19.0.2")], calico_delay=0.2,
                          deployment_modes={"default/stuck": "deadline"})
    request.addfinalizer(cluster.stop)
    cluster.start()
    assert [_conds(n)["Ready"] for n in emu.store.list("v1", "Node")] == ["False", "False"]
    _operator(emu)
    crd = _wait_for(lambda: emu.store.get("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                                          "installations.operator.tigera.io"))
    assert _conds(crd)["Established"] == "True"
    op = emu.store.get("apps/v1", "Deployment", "tigera-operator", "tigera-operator")
    assert op["status"]["availableReplicas"] == 2 and _conds(op) == {"Available": "True", "Progressing": "True"}
    emu.store.put({"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "metadata": {"name": "default"},
                   "spec": {}})
    ts = _wait_for(lambda: (lambda o: o if o and _conds(o) else None)(  # created, then its conditions set
        emu.store.get("operator.tigera.io/v1", "TigeraStatus", "calico")))
    assert _conds(ts).get("Progressing") == "True" or _conds(ts).get("Available") == "True"
    _wait_for(lambda: _conds(emu.store.get("operator.tigera.io/v1", "TigeraStatus", "calico"))["Available"] == "True")
    _wait_for(lambda: all(_conds(n)["Ready"] == "True" for n in emu.store.list("v1", "Node")))
    stuck = dict(json.loads(json.dumps(DEPLOY)), metadata={"name": "stuck", "namespace": "default"})
    emu.store.put(stuck)
    d = _wait_for(lambda: (emu.store.get("apps/v1", "Deployment", "stuck", "default") or {}).get("status"))
    assert any(c["reason"] == "ProgressDeadlineExceeded" for c in d["conditions"])
    events = emu.store.list("v1", "Event", "default", field_selector="involvedObject.name=stuck")
    assert [e["reason"] for e in events] == ["ProgressDeadlineExceeded"]


def test_fake_cluster_degraded(request, emu):
    cluster = FakeCluster(emu, nodes=[("control", "198.19.0.1")], calico="degraded", calico_delay=0.1,
                          degraded_message="boom")
    request.addfinalizer(cluster.stop)
    cluster.start()
    _operator(emu)
    _wait_for(lambda: emu.store.get("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                                    "tigerastatuses.operator.tigera.io"))
    emu.store.put({"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "metadata": {"name": "default"}})
    ts = _wait_for(lambda: (lambda o: o if _conds(o).get("Degraded") == "True" else None)(
        emu.store.get("operator.tigera.io/v1", "TigeraStatus", "calico")))
    assert next(c for c in ts["status"]["conditions"] if c["type"] == "Degraded")["message"] == "boom"
    cluster.reconcile()  # one more pass of every controller: a degraded Calico never makes a node Ready
    assert _conds(emu.store.list("v1", "Node")[0])["Ready"] == "False"


def test_fake_cluster_pod_faults_from_a_switches_file(request, emu, tmp_path):
    switches = tmp_path / "switches.json"
    switches.write_text(json.dumps({"deployment_modes": {"default/web": "image-pull"}}))
    cluster = FakeCluster(emu, nodes=[("control", "198.19.0.1"), ("node1", "198.19.0.2")], switches_file=str(switches))
    request.addfinalizer(cluster.stop)
    cluster.start()
    emu.store.put(dict(json.loads(json.dumps(DEPLOY)), metadata={"name": "web", "namespace": "default"}))

    def pods():
        return emu.store.list("v1", "Pod", "default", label_selector="app=web")

    pulled = _wait_for(lambda: len(pods()) == 2 and pods())
    assert {p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] for p in pulled} == {"ImagePullBackOff"}
    assert all(p["metadata"]["name"].startswith("web-") and p["spec"]["nodeName"] for p in pulled)
    events = emu.store.list("v1", "Event", "default", field_selector=f"involvedObject.name={pulled[0]['metadata']['name']}")
    assert 'Failed to pull image "nginx:1.25"' in " ".join(e["message"] for e in events)
    status = _wait_for(lambda: emu.store.get("apps/v1", "Deployment", "web", "default").get("status"))
    assert status["observedGeneration"] == 1 and status.get("availableReplicas", 0) == 0

    switches.write_text(json.dumps({"deployment_modes": {"default/web": "unschedulable"}}))
    pending = _wait_for(lambda: [p for p in pods() if p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName")])
    scheduled = next(c for c in pending[0]["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert scheduled["message"].startswith("0/2 nodes are available")
    events = _wait_for(lambda: emu.store.list(  # the controller records the event just after the pod
        "v1", "Event", "default", field_selector=f"involvedObject.name={pending[0]['metadata']['name']}"))
    assert [e["reason"] for e in events] == ["FailedScheduling"]

    switches.write_text(json.dumps({"deployment_modes": {}}))
    _wait_for(lambda: pods() == [])
    _wait_for(lambda: emu.store.get("apps/v1", "Deployment", "web", "default")["status"].get("availableReplicas") == 2)


def test_fake_operator_reconciles_ippools_like_operator_v1_42(request, emu):
    """Bootstrap without the API server; later changes only through it (else ippools Degraded); a new CIDR
    replaces the pool; the block size of a pool cannot change."""
    cluster = FakeCluster(emu, nodes=[("control", "198.19.0.1")], calico_delay=0.05)
    request.addfinalizer(cluster.stop)
    cluster.start()
    _operator(emu)
    _wait_for(lambda: emu.store.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "ippools.crd.projectcalico.org"))
    tigera, ippool = "operator.tigera.io/v1", "crd.projectcalico.org/v1"
    status = lambda name: (emu.store.get(tigera, "TigeraStatus", name) or {}).get("status") or {}  # noqa: E731
    degraded = lambda: next((c["message"] for c in status("ippools").get("conditions", [])  # noqa: E731
                             if c["type"] == "Degraded" and c["status"] == "True"), None)

    def installation(**pool):
        pool = {"name": "default-ipv4-ippool", "cidr": "198.19.16.0/21", "blockSize": 26, "natOutgoing": "Enabled",
                "encapsulation": "None", **pool}
        emu.store.put({"apiVersion": tigera, "kind": "Installation", "metadata": {"name": "default"},
                       "spec": {"calicoNetwork": {"ipPools": [pool]}}})

    installation()
    pool = _wait_for(lambda: emu.store.get(ippool, "IPPool", "default-ipv4-ippool"))
    assert pool["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "tigera-operator"}
    assert (pool["spec"]["natOutgoing"], pool["spec"]["ipipMode"], pool["spec"]["vxlanMode"]) == (True, "Never", "Never")
    _wait_for(lambda: _conds({"status": status("ippools")}).get("Available") == "True")

    installation(natOutgoing="Disabled")
    assert _wait_for(degraded) == "Unable to modify IP pools while Calico API server is unavailable"
    assert emu.store.get(ippool, "IPPool", "default-ipv4-ippool")["spec"]["natOutgoing"] is True
    assert _conds({"status": status("ippools")})["Available"] == "False"

    emu.store.put({"apiVersion": tigera, "kind": "APIServer", "metadata": {"name": "default"}, "spec": {}})
    _wait_for(lambda: _conds({"status": status("apiserver")}).get("Available") == "True")
    assert emu.store.get(tigera, "APIServer", "default")["status"]["state"] == "Ready"
    _wait_for(lambda: emu.store.get(ippool, "IPPool", "default-ipv4-ippool")["spec"]["natOutgoing"] is False)
    _wait_for(lambda: degraded() is None and _conds({"status": status("ippools")})["Available"] == "True")

    installation(name="ipv4-ippool-198-19-16-0-22", cidr="198.19.16.0/22", natOutgoing="Disabled")
    _wait_for(lambda: [p["metadata"]["name"] for p in emu.store.list(ippool, "IPPool")] == ["ipv4-ippool-198-19-16-0-22"])

    installation(name="ipv4-ippool-198-19-16-0-22", cidr="198.19.16.0/22", natOutgoing="Disabled", blockSize=24)
    assert "IPPool BlockSize cannot be modified" in _wait_for(degraded)
    assert emu.store.get(ippool, "IPPool", "ipv4-ippool-198-19-16-0-22")["spec"]["blockSize"] == 26

    emu.store.remove(tigera, "APIServer", "default")
    _wait_for(lambda: emu.store.get(tigera, "TigeraStatus", "apiserver") is None)

# ---- real kubectl ------------------------------------------------------------------------------------

APP_YAML = """\
apiVersion: v1
kind: Namespace
metadata: {name: yaobank}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: customer, namespace: yaobank, labels: {app: customer}}
spec:
  replicas: 1
  selector: {matchLabels: {app: customer}}
  template:
    metadata: {labels: {app: customer}}
    spec:
      containers: [{name: customer, image: "nginx:1.25", ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: customer, namespace: yaobank}
spec:
  type: NodePort
  selector: {app: customer}
  ports: [{port: 80, targetPort: 80, nodePort: 30180}]
"""


@pytest.fixture
def kubectl(request, tmp_path):
    if KUBECTL is None:
        pytest.skip("kubectl not installed")
    emu = _start(request, tls=True)
    kc = emu.write_kubeconfig(tmp_path / "kubeconfig")
    env = dict(os.environ, KUBECONFIG=str(kc), HOME=str(tmp_path))

    def run(*args, input=None, check=True):
        p = subprocess.run([KUBECTL, *args], env=env, input=input, capture_output=True, text=True, timeout=40)
        if check:
            assert p.returncode == 0, p.stderr
        return p
    run.emu, run.env = emu, env
    return run


@pytest.mark.kubectl
def test_kubectl_apply_get_rollout(kubectl, tmp_path):
    f = tmp_path / "app.yaml"
    f.write_text(APP_YAML)
    out = kubectl("apply", "--server-side", "-f", str(f)).stdout
    assert "namespace/yaobank serverside-applied" in out and "deployment.apps/customer" in out
    rv = kubectl("get", "deploy", "customer", "-n", "yaobank", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    out = kubectl("apply", "--server-side", "-f", str(f)).stdout
    assert all(("unchanged" in line or "serverside-applied" in line) for line in out.strip().splitlines())
    assert kubectl("get", "deploy", "customer", "-n", "yaobank", "-o",
                   "jsonpath={.metadata.resourceVersion} {.metadata.generation}").stdout == f"{rv} 1"
    assert kubectl("get", "svc", "customer", "-n", "yaobank", "-o",
                   "jsonpath={.spec.ports[0].nodePort}").stdout == "30180"
    cluster = FakeCluster(kubectl.emu, nodes=[("control", "198.19.0.1")], deployments="never")
    cluster.start()
    try:
        # the controller has seen the deployment (until then kubectl's first line is "Waiting for
        # deployment spec update to be observed...", and the line asserted below may never come)
        _wait_for(lambda: ((kubectl.emu.store.get("apps/v1", "Deployment", "customer", "yaobank") or {})
                           .get("status") or {}).get("observedGeneration") == 1)
        waiting = subprocess.Popen([KUBECTL, "rollout", "status", "deployment/customer", "-n", "yaobank",
                                    "--timeout=30s"], env=kubectl.env, stdout=subprocess.PIPE, text=True)
        first = waiting.stdout.readline()  # kubectl saw the rollout unfinished (watching now) ...
        assert first.startswith('Waiting for deployment "customer" rollout to finish'), first
        cluster.deployments = "rollout"  # ... then the controller finishes it
        rest, _ = waiting.communicate(timeout=40)
        assert waiting.returncode == 0 and "successfully rolled out" in rest
        assert kubectl("scale", "deployment/customer", "-n", "yaobank", "--replicas=2").returncode == 0
        kubectl("rollout", "status", "deployment/customer", "-n", "yaobank", "--timeout=20s")
        rows = kubectl("get", "deploy,svc", "-n", "yaobank").stdout
        assert "2/2" in rows and "80:30180/TCP" in rows and "NodePort" in rows
        cluster.deployment_modes["yaobank/customer"] = "deadline"
        kubectl("set", "image", "deployment/customer", "-n", "yaobank", "customer=nginx:1.27")
        p = kubectl("rollout", "status", "deployment/customer", "-n", "yaobank", "--timeout=20s", check=False)
        assert p.returncode != 0 and "exceeded its progress deadline" in p.stderr
    finally:
        cluster.stop()


@pytest.mark.kubectl
def test_kubectl_wait_tigerastatus(kubectl):
    emu = kubectl.emu
    cluster = FakeCluster(emu, nodes=[("control", "198.19.0.1")], calico_delay=1.0)
    cluster.start()
    try:
        _operator(emu)
        kubectl("wait", "--for=condition=Established", "crd/installations.operator.tigera.io", "--timeout=20s")
        kubectl("apply", "--server-side", "-f", "-", input="apiVersion: operator.tigera.io/v1\nkind: Installation\n"
                "metadata: {name: default}\nspec:\n  calicoNetwork:\n    ipPools: [{cidr: 198.19.16.0/21}]\n")
        _wait_for(lambda: emu.store.get("operator.tigera.io/v1", "TigeraStatus", "calico"))
        p = kubectl("wait", "--for=condition=Available", "tigerastatus/calico", "--timeout=20s")
        assert "condition met" in p.stdout
        table = kubectl("get", "tigerastatus").stdout.splitlines()
        assert table[0].split() == ["NAME", "AVAILABLE", "PROGRESSING", "DEGRADED", "SINCE"]
        assert table[1].split()[:4] == ["calico", "True", "False", "False"]
        assert kubectl("get", "nodes", "-o", "jsonpath={.items[0].status.conditions[0].status}").stdout == "True"
    finally:
        cluster.stop()
