"""Pure unit tests of calicolab.kube: rollout rule, ordering, normalisation and diff, pool changes,
the polling waits against an in-memory API, and the k3s-kubectl fallback with canned output."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from calicolab.kube import apply as kapply
from calicolab.kube import client as kclient
from calicolab.kube import pools, waits
from calicolab.kube.client import ApplyConflict, KubeApi, KubectlApi, NotFound
from calicolab.kube.diff import normalise, unified_diff
from calicolab.model import load_defaults, load_lab


# --- rollout rule (kubectl rollout_status.go), one test per row ----------------------------------


def deployment(generation=1, observed=1, replicas=2, updated=2, total=2, available=2, conditions=None, spec_replicas="unset"):
    spec = {}
    if spec_replicas != "unset":
        spec["replicas"] = spec_replicas
    else:
        spec["replicas"] = replicas
    status = {
        "observedGeneration": observed,
        "updatedReplicas": updated,
        "replicas": total,
        "availableReplicas": available,
    }
    if conditions:
        status["conditions"] = conditions
    return {"metadata": {"name": "summary", "generation": generation}, "spec": spec, "status": status}


def test_rollout_row1_generation_not_observed():
    check = waits.rollout_status(deployment(generation=3, observed=2))
    assert (check.done, check.failed) == (False, False)
    assert check.message == "Waiting for deployment spec update to be observed..."


def test_rollout_row1_before_row2():
    pde = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
    check = waits.rollout_status(deployment(generation=2, observed=1, conditions=pde))
    assert not check.failed and not check.done


def test_rollout_row2_progress_deadline_exceeded_is_failure():
    pde = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
    check = waits.rollout_status(deployment(updated=0, available=0, conditions=pde))
    assert check.failed and not check.done
    assert check.message == 'deployment "summary" exceeded its progress deadline'


def test_rollout_row3_updated_below_spec():
    check = waits.rollout_status(deployment(replicas=2, updated=1, total=1, available=1))
    assert check.message == (
        'Waiting for deployment "summary" rollout to finish: 1 out of 2 new replicas have been updated...'
    )
    assert not check.done


def test_rollout_row4_old_replicas_pending():
    check = waits.rollout_status(deployment(replicas=2, updated=2, total=3, available=2))
    assert check.message == (
        'Waiting for deployment "summary" rollout to finish: 1 old replicas are pending termination...'
    )


def test_rollout_row5_available_below_updated():
    check = waits.rollout_status(deployment(replicas=2, updated=2, total=2, available=1))
    assert check.message == (
        'Waiting for deployment "summary" rollout to finish: 1 of 2 updated replicas are available...'
    )


def test_rollout_row6_done_and_available_condition_ignored():
    conds = [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]
    check = waits.rollout_status(deployment(conditions=conds))
    assert check.done and not check.failed
    assert check.message == 'deployment "summary" successfully rolled out'


def test_rollout_missing_status_counts_as_zero():
    dep = {"metadata": {"name": "customer", "generation": 1}, "spec": {"replicas": 1}}
    check = waits.rollout_status(dep)
    assert check.message == "Waiting for deployment spec update to be observed..."
    dep["status"] = {"observedGeneration": 1}
    assert "0 out of 1 new replicas" in waits.rollout_status(dep).message


def test_rollout_spec_replicas_unset_skips_row3():
    dep = deployment(spec_replicas=None, updated=0, total=0, available=0)
    dep["spec"].pop("replicas")
    assert waits.rollout_status(dep).done


# --- parsing and ordering ------------------------------------------------------------------------

MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: op, namespace: ns1}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: op, namespace: ns1}
---
# only a comment
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: op}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: things.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: ns1}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: op}
---
apiVersion: v1
kind: Namespace
metadata: {name: ns1}
"""


def test_parse_skips_empty_documents():
    objects = kapply.parse_manifest(MANIFEST)
    assert len(objects) == 7


def test_order_namespaces_crds_rbac_serviceaccounts_rest_stable():
    ordered = kapply.order_objects(kapply.parse_manifest(MANIFEST))
    assert [o["kind"] for o in ordered] == [
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRoleBinding",
        "ClusterRole",
        "ServiceAccount",
        "Deployment",
        "Service",
    ]


def test_parse_rejects_incomplete_document():
    with pytest.raises(kapply.ManifestError, match="metadata.name"):
        kapply.parse_manifest("apiVersion: v1\nkind: Namespace\nmetadata: {}\n")


def test_object_ref_is_kubectl_style():
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "tigera-operator", "namespace": "tigera-operator"}}
    assert kclient.object_ref(dep) == "deployment.apps/tigera-operator -n tigera-operator"
    assert kclient.object_ref({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}) == "namespace/x"


# --- normalisation and diff ---------------------------------------------------------------------


def live_deployment(replicas=1):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "tigera-operator",
            "namespace": "tigera-operator",
            "uid": "u-1",
            "resourceVersion": "77",
            "generation": 4,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "selfLink": "/x",
            "managedFields": [{"manager": "calicolab"}],
            "annotations": {"deployment.kubernetes.io/revision": "3"},
        },
        "spec": {"replicas": replicas},
        "status": {"replicas": 1},
    }


def test_normalise_drops_server_noise():
    norm = normalise(live_deployment())
    assert norm["metadata"] == {"name": "tigera-operator", "namespace": "tigera-operator"}
    assert "status" not in norm


def test_normalise_keeps_user_annotations():
    obj = live_deployment()
    obj["metadata"]["annotations"]["team"] = "calico"
    assert normalise(obj)["metadata"]["annotations"] == {"team": "calico"}


def test_diff_empty_when_only_noise_differs():
    a = live_deployment()
    b = live_deployment()
    b["metadata"]["resourceVersion"] = "99"
    b["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "4"
    b["status"] = {"replicas": 3}
    assert unified_diff(a, b, "deployment.apps/tigera-operator -n tigera-operator") == ""


def test_diff_has_headers_and_changed_line():
    ref = "deployment.apps/tigera-operator -n tigera-operator"
    text = unified_diff(live_deployment(1), live_deployment(2), ref)
    assert text.startswith(f"--- live {ref}\n+++ applied\n")
    assert "-  replicas: 1\n" in text and "+  replicas: 2\n" in text


def test_diff_of_absent_object_is_a_creation():
    text = unified_diff(None, live_deployment(), "deployment.apps/tigera-operator -n tigera-operator")
    assert "(absent: will create)" in text.splitlines()[0]
    assert all(line.startswith(("+", "-", "@")) for line in text.splitlines())
    assert "uid" not in text


# --- pool changes as the operator applies them (kube.pools) -------------------------------------


def installation(cidr="198.19.16.0/21", nat="Enabled", encap="None", block=26):
    pool = {"name": pools.pool_name(cidr), "cidr": cidr, "natOutgoing": nat, "encapsulation": encap,
            "blockSize": block, "nodeSelector": "all()"}
    return {
        "apiVersion": "operator.tigera.io/v1",
        "kind": "Installation",
        "metadata": {"name": "default"},
        "spec": {"calicoNetwork": {"containerIPForwarding": "Enabled", "ipPools": [pool]}},
    }


def ippool(cidr="198.19.16.0/21", nat=True, ipip="Never", vxlan="Never", block=26, owned=True):
    labels = {"app.kubernetes.io/managed-by": "tigera-operator"} if owned else {}
    return {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
            "metadata": {"name": pools.pool_name(cidr), "labels": labels},
            "spec": {"cidr": cidr, "blockSize": block, "natOutgoing": nat, "ipipMode": ipip, "vxlanMode": vxlan,
                     "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"]}}


def test_pool_names_keep_the_course_name_and_give_other_cidrs_their_own():
    assert pools.pool_name("198.19.16.0/21") == "default-ipv4-ippool"
    assert pools.pool_name("198.19.16.0/22") == "ipv4-ippool-198-19-16-0-22"


def test_an_unchanged_pool_needs_nothing_and_a_fresh_cluster_is_bootstrapped_without_the_api_server():
    assert pools.plan_pools(installation(), [ippool()]).changes == []
    fresh = pools.plan_pools(installation(), [])
    assert fresh.changes and fresh.bootstrap and not fresh.needs_apiserver
    assert pools.review_message(fresh, apiserver=False) == ("", False)


@pytest.mark.parametrize("wanted, change", [
    (installation(nat="Disabled"), "natOutgoing true -> false"),
    (installation(encap="VXLAN"), "vxlanMode Never -> Always"),
    (installation(encap="IPIPCrossSubnet"), "ipipMode Never -> CrossSubnet"),
])
def test_a_changed_pool_is_an_update_of_the_owned_pool(wanted, change):
    plan = pools.plan_pools(wanted, [ippool()])
    assert plan.updates == [f"IPPool default-ipv4-ippool (198.19.16.0/21): {change}"]
    assert plan.needs_apiserver and not plan.creates and not plan.deletes


def test_without_the_api_server_the_change_is_blocked_with_both_ways_forward():
    message, blocked = pools.review_message(pools.plan_pools(installation(nat="Disabled"), [ippool()]), apiserver=False)
    assert blocked
    assert "cannot apply this change" in message and "natOutgoing true -> false" in message
    assert "Unable to modify IP pools while Calico API server is unavailable" in message
    assert "--data calico_apiserver=Enabled" in message and "teardown.py" in message


def test_with_the_api_server_the_change_goes_through():
    message, blocked = pools.review_message(pools.plan_pools(installation(nat="Disabled"), [ippool()]), apiserver=True)
    assert not blocked
    assert "will apply this through the Calico API server" in message and "tigerastatus/ippools" in message


def test_a_new_cidr_creates_a_pool_deletes_the_old_one_and_says_what_happens_to_running_pods():
    plan = pools.plan_pools(installation(cidr="198.19.16.0/22"), [ippool()])
    assert plan.creates == ["IPPool ipv4-ippool-198-19-16-0-22 (198.19.16.0/22) created"]
    assert plan.deletes == ["IPPool default-ipv4-ippool (198.19.16.0/21) deleted"]
    message, blocked = pools.review_message(plan, apiserver=True)
    assert not blocked and "keep their addresses from the old pool until they are recreated" in message


def test_a_block_size_change_is_refused_naming_the_setting_with_or_without_the_api_server():
    plan = pools.plan_pools(installation(block=24), [ippool()])
    assert pools.block_size_problems(plan) == [
        "calico_pool_block_size: 24 differs from the live IPPool default-ipv4-ippool (198.19.16.0/21), which has "
        "blockSize 26; Calico cannot change the block size of an existing pool. Keep calico_pool_block_size=26, "
        "or rebuild the lab with the new block size (`pyinfra inventory.py teardown.py`, then deploy)"]
    assert pools.review_message(plan, apiserver=True)[1] is True


def test_pools_not_owned_by_the_operator_are_left_alone():
    external = ippool(cidr="198.19.24.0/21", owned=False)
    assert pools.plan_pools(installation(), [ippool(), external]).changes == []


def test_pools_check_waits_for_the_pool_and_for_ippools_available():
    available = {"status": {"conditions": [{"type": "Available", "status": "True"}]}}
    degraded = {"status": {"conditions": [{"type": "Available", "status": "False"}, {
        "type": "Degraded", "status": "True", "reason": "ResourceNotReady",
        "message": "Unable to modify IP pools while Calico API server is unavailable"}]}}
    assert pools.pools_check(installation(), [ippool()], available).done
    pending = pools.pools_check(installation(nat="Disabled"), [ippool()], available)
    assert not pending.done and "natOutgoing true -> false" in pending.message
    failed = pools.pools_check(installation(nat="Disabled"), [ippool()], degraded)
    assert failed.failed and "API server is unavailable" in failed.message


# --- planning and applying against an in-memory API ------------------------------------------------


class MemoryApi(KubeApi):
    """Minimal in-memory KubeApi: apply = merge of the body into the stored object."""

    description = "memory"

    def __init__(self, objects=(), missing_kinds=(), conflicts=()):
        self.store = {}
        self.missing_kinds = set(missing_kinds)
        self.conflicts = set(conflicts)
        self.applied = []
        self.lists = {}
        self.snapshots = 0
        for obj in objects:
            self.store[self.key(obj)] = json.loads(json.dumps(obj))

    @staticmethod
    def key(obj):
        meta = obj["metadata"]
        return (obj["kind"], meta["name"], meta.get("namespace"))

    def get(self, api_version, kind, name, namespace=None, timeout=None):
        return self.store.get((kind, name, namespace))

    def snapshot(self, api_version, kind, namespace=None, label_selector=None, timeout=None):
        self.snapshots += 1
        if kind in self.lists:
            return self.lists[kind], None
        return [o for (k, _, ns), o in self.store.items() if k == kind and (namespace is None or ns == namespace)], None

    def apply(self, obj, dry_run=False, timeout=None):
        if obj["kind"] in self.missing_kinds:
            raise NotFound(f"the API does not serve kind {obj['kind']}")
        if obj["metadata"]["name"] in self.conflicts:
            raise ApplyConflict(kclient.conflict_hint(kclient.object_ref(obj), 'conflict with "kubectl": .spec.replicas'))
        merged = json.loads(json.dumps(self.store.get(self.key(obj), {})))
        merged.update(json.loads(json.dumps(obj)))
        merged.setdefault("metadata", {})["resourceVersion"] = "2"
        if not dry_run:
            self.store[self.key(obj)] = merged
            self.applied.append(kclient.object_ref(obj))
        return merged


def test_plan_create_update_unchanged_conflict_and_missing_kind():
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1"}}
    dep = live_deployment(1)
    api = MemoryApi([ns, dep], conflicts={"blocked"})
    blocked = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "blocked", "namespace": "ns1"}, "data": {}}
    api.store[MemoryApi.key(blocked)] = blocked
    installation_ = installation()
    api.missing_kinds.add("Installation")
    new_cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new", "namespace": "ns1"}}
    plans = kapply.plan_apply(api, [normalise(dep) | {"spec": {"replicas": 2}}, ns, blocked, installation_, new_cm])
    by_ref = {p.ref: p for p in plans}
    assert by_ref["namespace/ns1"].action == "unchanged"
    assert by_ref["deployment.apps/tigera-operator -n tigera-operator"].action == "update"
    assert by_ref["configmap/blocked -n ns1"].action == "conflict"
    assert "does not take them over" in by_ref["configmap/blocked -n ns1"].note
    assert by_ref["installation.operator.tigera.io/default"].action == "create"
    assert by_ref["configmap/new -n ns1"].action == "create"
    assert api.applied == []  # planning never writes


def test_apply_objects_reports_and_stops_at_first_failure():
    api = MemoryApi(conflicts={"b"})
    objs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "namespace": "x"}} for n in ("a", "b", "c")
    ]
    with pytest.raises(kapply.ApplyFailed) as info:
        kapply.apply_objects(api, objs)
    assert info.value.ref == "configmap/b -n x"
    assert "1 created" in str(info.value)
    assert api.applied == ["configmap/a -n x"]


# --- waits with the in-memory API -------------------------------------------------------------


def test_wait_rollouts_failure_names_deployment_and_events():
    pde = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"summary-1\" has timed out progressing."}]
    api = MemoryApi([dict(deployment(updated=0, available=0, conditions=pde), apiVersion="apps/v1", kind="Deployment")])
    api.store = {("Deployment", "summary", "yaobank"): api.store.pop(next(iter(api.store)))}
    api.lists["Event"] = [
        {"type": "Warning", "reason": "Failed", "message": "ImagePullBackOff", "involvedObject": {"kind": "Pod", "name": "summary-1-abc"}},
        {"type": "Normal", "reason": "Scheduled", "message": "other", "involvedObject": {"kind": "Pod", "name": "customer-1"}},
    ]
    with pytest.raises(waits.WaitFailed) as info:
        waits.wait_rollouts(api, "yaobank", ["summary"], timeout=5)
    text = str(info.value)
    assert 'deployment "summary" exceeded its progress deadline' in text
    assert "ProgressDeadlineExceeded" in text and "pod/summary-1-abc: ImagePullBackOff" in text
    assert "customer-1" not in text


def pod(name, status, container="customer", image="calico/yaobank-customer:multiarch"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "yaobank", "labels": {"app": "customer"}},
            "spec": {"containers": [{"name": container, "image": image}]}, "status": status}


IMAGE_PULL = {"phase": "Pending", "containerStatuses": [{"name": "customer", "ready": False, "state": {"waiting": {
    "reason": "ImagePullBackOff", "message": 'Back-off pulling image "calico/yaobank-customer:multiarch"'}}}]}
CRASH_LOOP = {"phase": "Running", "containerStatuses": [{"name": "customer", "ready": False, "restartCount": 4,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container"}},
    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
UNSCHEDULABLE = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "message": "0/3 nodes are available: 3 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."}]}
STARTING = {"phase": "Pending", "containerStatuses": [{"name": "customer", "ready": False,
    "state": {"waiting": {"reason": "ContainerCreating"}}}], "conditions": [{"type": "PodScheduled", "status": "True"},
    {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "containers with unready status: [customer]"}]}
READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
         "containerStatuses": [{"name": "customer", "ready": True, "state": {"running": {}}}]}


def test_pod_problems_say_what_kubectl_would_show_with_the_cause():
    def described(status):
        return [p.describe() for p in waits.pod_problems(pod("customer-1-a", status))]

    assert described(IMAGE_PULL) == [
        'pod customer-1-a: ImagePullBackOff (container customer): Back-off pulling image "calico/yaobank-customer:multiarch"']
    assert described(CRASH_LOOP) == ["pod customer-1-a: CrashLoopBackOff (container customer): last exit code 137 "
                                     "(OOMKilled), 4 restarts, back-off 1m20s restarting failed container"]
    assert described(UNSCHEDULABLE) == ["pod customer-1-a: Pending (Unschedulable): 0/3 nodes are available: "
                                        "3 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."]
    assert described(STARTING) == ["pod customer-1-a: Pending: ContainersNotReady: containers with unready status: [customer]"]
    assert described(READY) == []


def test_pod_next_steps_use_the_given_kubectl_and_name_the_image_setting():
    problems = waits.pod_problems(pod("customer-1-a", IMAGE_PULL)) + waits.pod_problems(pod("customer-1-b", CRASH_LOOP))
    steps = waits.pod_next_steps(problems, "yaobank", "multipass exec control -- sudo k3s kubectl", "yaobank_images")
    assert steps == [
        'check that the image "calico/yaobank-customer:multiarch" (setting yaobank_images) exists and that the VMs '
        "reach its registry; fix the name with --data and re-run",
        "`multipass exec control -- sudo k3s kubectl -n yaobank describe pod customer-1-a`",
        "`multipass exec control -- sudo k3s kubectl -n yaobank logs customer-1-b -c customer --previous`",
        "`multipass exec control -- sudo k3s kubectl -n yaobank describe pod customer-1-b`",
    ]


def test_wait_rollouts_failure_lists_each_pods_reason_its_warnings_and_the_next_commands():
    dep = dict(deployment(updated=1, total=1, available=0, replicas=1), apiVersion="apps/v1", kind="Deployment")
    dep["metadata"] = {"name": "customer", "namespace": "yaobank", "generation": 1}
    dep["spec"]["selector"] = {"matchLabels": {"app": "customer"}}
    api = MemoryApi([dep, pod("customer-5d-x1", IMAGE_PULL)])
    selectors = []
    real_list = api.list
    api.list = lambda av, kind, namespace=None, label_selector=None: (selectors.append((kind, label_selector)),
                                                                       real_list(av, kind, namespace))[1]
    api.lists["Event"] = [
        {"type": "Warning", "reason": "Failed", "message": 'Failed to pull image "calico/yaobank-customer:multiarch": not found',
         "involvedObject": {"kind": "Pod", "name": "customer-5d-x1"}, "lastTimestamp": "2026-01-01T00:00:01Z"},
        {"type": "Normal", "reason": "Pulling", "message": "Pulling image", "involvedObject": {"kind": "Pod", "name": "customer-5d-x1"}},
    ]
    with pytest.raises(waits.WaitFailed) as info:
        waits.wait_rollouts(api, "yaobank", ["customer"], timeout=0.05, kubectl="k", image_setting="yaobank_images")
    first, *steps = str(info.value).split("\nNext: ")
    assert "timed out waiting for the condition after 0.05s" in first
    assert ('pod customer-5d-x1: ImagePullBackOff (container customer): Back-off pulling image '
            '"calico/yaobank-customer:multiarch"') in first
    assert '\n  event: Warning Failed pod/customer-5d-x1: Failed to pull image' in first
    assert "Pulling" not in first and "no related" not in first
    assert ("Pod", "app=customer") in selectors
    assert steps[-1] == "`k -n yaobank describe pod customer-5d-x1`"
    assert "(setting yaobank_images)" in steps[0]


def test_wait_rollouts_without_pods_points_at_the_deployment():
    dep = dict(deployment(available=0), apiVersion="apps/v1", kind="Deployment")
    dep["metadata"] = {"name": "summary", "namespace": "yaobank", "generation": 1}
    with pytest.raises(waits.WaitFailed) as info:
        waits.wait_rollouts(MemoryApi([dep]), "yaobank", ["summary"], timeout=0.05, kubectl="k")
    assert str(info.value).endswith("\nNext: `k -n yaobank describe deployment summary`")


def test_wait_rollouts_timeout():
    api = MemoryApi()
    logs = []
    with pytest.raises(waits.WaitFailed, match=r'timed out waiting for the condition after 0.1s: deployment "customer" not found'):
        waits.wait_rollouts(api, "yaobank", ["customer"], timeout=0.1, log=logs.append)
    assert logs and "waiting for deployment(s) customer -n yaobank" in logs[0]


def test_wait_tigerastatus_degraded_after_grace():
    ts = {
        "apiVersion": "operator.tigera.io/v1",
        "kind": "TigeraStatus",
        "metadata": {"name": "calico"},
        "status": {"conditions": [
            {"type": "Available", "status": "False"},
            {"type": "Degraded", "status": "True", "reason": "PodFailure", "message": "calico-node: ImagePullBackOff"},
        ]},
    }
    api = MemoryApi([ts])
    with pytest.raises(waits.WaitFailed, match="tigerastatus/calico Degraded: PodFailure: calico-node: ImagePullBackOff") as info:
        waits.wait_tigerastatus(api, "calico", timeout=5, degraded_grace=0.05, kubectl="k")
    assert str(info.value).split("\nNext: ")[1:] == [
        "`k describe tigerastatus calico`", "`k -n calico-system get pods`",
        "`k -n tigera-operator logs deployment/tigera-operator --tail=50`"]


def test_a_failed_tigerastatus_wait_names_calicos_warning_even_when_newer_normal_events_abound():
    ts = {"apiVersion": "operator.tigera.io/v1", "kind": "TigeraStatus", "metadata": {"name": "calico"},
          "status": {"conditions": [{"type": "Available", "status": "False"}]}}
    api = MemoryApi([ts])

    def event(i, type_, reason, message):
        return {"type": type_, "reason": reason, "message": message, "lastTimestamp": f"2026-12-02T10:00:{i:02d}Z",
                "involvedObject": {"kind": "Pod", "name": f"calico-node-{i}"}}

    # a busy calico-system: the one Warning is older than more Normal events than a message lists
    api.lists["Event"] = [event(0, "Warning", "Failed", "Failed to pull image \"calico/node:v0\"")] + [
        event(i, "Normal", "Pulled", f"image {i} pulled") for i in range(1, waits.MAX_EVENTS + 4)]
    with pytest.raises(waits.WaitFailed) as info:
        waits.wait_tigerastatus(api, "calico", timeout=0.05)
    assert 'Warning Failed pod/calico-node-0: Failed to pull image "calico/node:v0"' in str(info.value)
    assert "Pulled" not in str(info.value)


def test_wait_tigerastatus_available_and_timeout():
    ts = {"apiVersion": "operator.tigera.io/v1", "kind": "TigeraStatus", "metadata": {"name": "calico"},
          "status": {"conditions": [{"type": "Available", "status": "True"}]}}
    assert waits.wait_tigerastatus(MemoryApi([ts]), "calico", timeout=1) == "tigerastatus/calico Available"
    with pytest.raises(waits.WaitFailed, match="calico not Available; conditions: the object does not exist"):
        waits.wait_tigerastatus(MemoryApi(), "calico", timeout=0.05)


def test_nodes_check_messages():
    nodes = [
        {"metadata": {"name": "control"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "node1"}, "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "cni plugin not initialized"}]}},
    ]
    check = waits.nodes_check(nodes, ["control", "node1", "node2"])
    assert not check.done
    assert check.message == (
        "nodes not Ready: node1 (Ready=False: KubeletNotReady, cni plugin not initialized); node2 (not registered)"
    )
    assert waits.nodes_check(nodes[:1], ["control"]).done


def test_crd_established():
    crd = {"status": {"conditions": [{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]}}
    assert waits.crd_established(crd, "x").done
    assert not waits.crd_established(None, "x").done
    assert "does not exist yet" in waits.crd_established(None, "x").message


def test_an_unreachable_api_is_retried_and_a_bug_ends_the_wait_at_once():
    ready = dict(deployment(), apiVersion="apps/v1", kind="Deployment")
    ready["metadata"] = {"name": "summary", "namespace": "yaobank", "generation": 1}

    class Restarting(MemoryApi):
        def snapshot(self, *args, **kwargs):
            if self.snapshots < 2:
                self.snapshots += 1
                raise kclient.ApiUnreachable("connection refused")
            return super().snapshot(*args, **kwargs)

    api = Restarting([ready])
    assert waits.wait_rollouts(api, "yaobank", ["summary"], timeout=60) == ['deployment "summary" successfully rolled out']
    assert api.snapshots == 3  # two refused, one answered

    broken = dict(ready, status=dict(ready["status"], updatedReplicas="two"))  # a plain bug (TypeError) must not become a 60 s timeout
    api = MemoryApi([broken])
    with pytest.raises(TypeError):
        waits.wait_rollouts(api, "yaobank", ["summary"], timeout=60)
    assert api.snapshots == 1


# --- connection candidates -------------------------------------------------------------------


def lab_in(tmp_path):
    return load_lab(load_defaults() | {"state_dir": str(tmp_path)})


def test_candidate_urls_order_and_dedup(tmp_path):
    lab = lab_in(tmp_path)
    urls = kclient.candidate_urls("https://198.19.0.1:6443", lab, ["192.168.64.5", "10.255.255.1"])
    assert urls == ["https://192.168.64.5:6443", "https://10.255.255.1:6443", "https://198.19.0.1:6443"]
    # what Multipass lists for control: its DHCP address first, then the lab and management addresses
    listed = ["192.168.64.5", "198.19.0.1", "10.255.255.1"]
    assert kclient.candidate_urls("https://198.19.0.1:6443", lab, listed)[0] == "https://192.168.64.5:6443"


def test_kubeconfig_server_uses_current_context():
    config = {
        "clusters": [{"name": "a", "cluster": {"server": "https://a:1"}}, {"name": "b", "cluster": {"server": "https://b:2"}}],
        "contexts": [{"name": "cb", "context": {"cluster": "b"}}],
        "current-context": "cb",
    }
    assert kclient.kubeconfig_server(config) == "https://b:2"


def test_missing_kubeconfig_is_unreachable(tmp_path):
    with pytest.raises(kclient.ApiUnreachable, match="no kubeconfig"):
        kclient.connect_direct(lab_in(tmp_path))


# --- fallback through the connector, canned output ------------------------------------------------


class CannedHost:
    name = "control"

    def __init__(self, responses):
        self.responses = responses  # list of (substring, ok, stdout, stderr)
        self.calls = []

    def run_shell_command(self, command, print_output=False, print_input=False, **kwargs):
        text = command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)
        self.calls.append((text, kwargs))
        for needle, ok, out, err in self.responses:
            if needle in text:
                return ok, SimpleNamespace(stdout=out, stderr=err)
        return True, SimpleNamespace(stdout="", stderr="")


def test_fallback_check_rejects_phantom_host():
    with pytest.raises(kclient.ApiUnreachable, match="does not answer"):
        KubectlApi(CannedHost([])).check()


def test_fallback_is_used_and_announced_once(tmp_path):
    host = CannedHost([("get --raw /readyz", True, "ok", ""), ("get Node", True, '{"items": []}', "")])
    logs = []
    session = kclient.Session(lambda: kclient.connect(lab_in(tmp_path), host=host), log=logs.append)
    assert session.list("v1", "Node") == [] and session.list("v1", "Node") == []
    assert isinstance(session.current(), KubectlApi)
    assert len(logs) == 1 and "no kubeconfig" in logs[0] and "using `k3s kubectl` on control" in logs[0]
    assert [c[0] for c in host.calls].count("k3s kubectl --request-timeout=120s get --raw /readyz") == 1
    assert host.calls[0][1]["_sudo"] is True and host.calls[0][1]["_timeout"]


class CountingConnect:
    """Stands in for ``connect``: counts connections, fails while ``down``."""

    def __init__(self, api):
        self.api, self.down, self.count = api, False, 0

    def __call__(self):
        self.count += 1
        if self.down:
            raise kclient.ApiUnreachable("no answer")
        return self.api


def test_session_connects_once_and_again_only_after_the_api_went_away():
    now = [0.0]
    api = MemoryApi([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "control"}}])
    connect = CountingConnect(api)
    session = kclient.Session(connect, clock=lambda: now[0])
    for _ in range(5):
        assert session.get("v1", "Node", "control")
    assert connect.count == 1

    def gone(*args, **kwargs):
        raise kclient.ApiUnreachable("connection refused")

    api.get = gone  # the API server restarts
    connect.down = True
    with pytest.raises(kclient.ApiUnreachable, match="connection refused"):
        session.get("v1", "Node", "control")
    for _ in range(3):  # within RECONNECT_AFTER: the failure is remembered, not retried per request
        with pytest.raises(kclient.ApiUnreachable, match="no answer"):
            session.list("v1", "Node")
    assert connect.count == 2
    now[0] += kclient.RECONNECT_AFTER
    del api.get
    connect.down = False
    assert session.get("v1", "Node", "control") and session.list("v1", "Node")
    assert connect.count == 3
    session.forget_failure()  # nothing failed: no effect
    assert session.get("v1", "Node", "control") and connect.count == 3


def test_fallback_get_apply_commands_and_errors():
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "customer", "namespace": "yaobank"}}
    host = CannedHost([
        ("get Deployment.v1.apps customer", True, json.dumps(dep), ""),
        ("get Installation.v1.operator.tigera.io", False, "", 'error: the server doesn\'t have a resource type "Installation"'),
        ("apply --server-side --dry-run=server", False, "", 'error: Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas'),
        ("apply --server-side", True, json.dumps(dep), ""),
    ])
    api = KubectlApi(host)
    assert api.get("apps/v1", "Deployment", "customer", "yaobank") == dep
    cmd, kwargs = host.calls[-1]
    assert cmd == "k3s kubectl --request-timeout=120s get Deployment.v1.apps customer -o json --ignore-not-found -n yaobank"
    assert api.get("operator.tigera.io/v1", "Installation", "default") is None
    with pytest.raises(ApplyConflict, match=r"conflict with \"kubectl-edit\".*\.spec\.replicas"):
        api.apply(dep, dry_run=True)
    assert api.apply(dep) == dep
    cmd, kwargs = host.calls[-1]
    assert cmd == "k3s kubectl --request-timeout=120s apply --server-side --field-manager=calicolab -o json -f -"
    assert json.loads(kwargs["_stdin"]) == dep


def test_apply_retries_a_kind_not_served_yet_right_after_crds():
    api = MemoryApi(missing_kinds={"Widget"})
    calls = {"n": 0}
    real = api.apply

    def apply(obj, dry_run=False, timeout=None):
        if obj["kind"] == "Widget":
            calls["n"] += 1
            if calls["n"] == 3:
                api.missing_kinds.discard("Widget")
        return real(obj, dry_run)

    api.apply = apply
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.x"}}
    widget = {"apiVersion": "x/v1", "kind": "Widget", "metadata": {"name": "w"}}
    result = kapply.apply_objects(api, [widget, crd])
    assert result.created == ["customresourcedefinition.apiextensions.k8s.io/widgets.x", "widget.x/w"]
    assert calls["n"] == 3


def test_apply_does_not_retry_unknown_kind_without_crds():
    api = MemoryApi(missing_kinds={"Widget"})
    with pytest.raises(kapply.ApplyFailed, match="does not serve kind Widget"):
        kapply.apply_objects(api, [{"apiVersion": "x/v1", "kind": "Widget", "metadata": {"name": "w"}}])


def test_fallback_connector_error_is_unreachable_not_a_crash(tmp_path):
    class BrokenHost(CannedHost):
        def run_shell_command(self, command, **kwargs):
            raise OSError("multipass: instance control is not running")

    with pytest.raises(kclient.ApiUnreachable, match="instance control is not running"):
        kclient.connect(lab_in(tmp_path), host=BrokenHost([]))
