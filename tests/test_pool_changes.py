"""Pool changes through the Calico phase (tasks/calico.py) as tigera-operator v1.42 applies them, against
the API emulator whose fake operator plays the IP-pool and APIServer controllers: a built lab, then a
change of natOutgoing, of the CIDR and of the block size, with and without the Calico API server."""

from __future__ import annotations

import ipaddress
import logging

import pytest
import yaml
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host, ctx_state

import tasks.calico
from calicolab.kube import waits
from calicolab.operations import kubernetes
from calicolab.render import render_manifest
from tests.support.kubeapi.controllers import FakeCluster
from tests.test_kube_ops import Run, loopback_only, make_lab  # noqa: F401 (fixtures)
from tests.test_kube_phases import emu, execute, op_results  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(90)

TIGERA = "operator.tigera.io/v1"
IPPOOL = "crd.projectcalico.org/v1"
WAYS_FORWARD = ("--data calico_apiserver=Enabled", "`pyinfra inventory.py teardown.py`, then deploy")


@pytest.fixture
def built(tmp_path, emu, monkeypatch):  # noqa: F811 (fixture)
    """A lab whose Calico phase has run once with the default settings (no API server)."""
    emu.write_kubeconfig(tmp_path / "kubeconfig.yaml")
    monkeypatch.setattr(tasks.calico, "SERVER", "@local")
    monkeypatch.setattr(waits, "DEGRADED_GRACE", 0.5)
    cluster = FakeCluster(emu, calico_delay=0.1).start()
    lab = make_lab(tmp_path, emu.port, timeout_operator_ready=10, timeout_calico_available=10, timeout_nodes_ready=10)
    run = calico_phase(lab)
    execute(run)
    assert set(op_results(run).values()) == {"changed", "no change"}, op_results(run)
    yield lab
    cluster.stop()


def with_settings(lab, **settings):
    return make_lab(lab.state_path, lab.k3s_api_port, **{**lab.settings, **settings})


def calico_phase(lab, diff=False) -> Run:
    run = Run(diff=diff)
    with ctx_state.use(run.state), ctx_host.use(run.host):
        tasks.calico.install(lab)
    return run


def pools(emu) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in emu.store.list(IPPOOL, "IPPool")}


def condition(emu, status, kind) -> dict:
    obj = emu.store.get(TIGERA, "TigeraStatus", status) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def test_a_built_lab_has_the_operator_owned_pool_and_no_api_server(built, emu):
    pool = pools(emu)["default-ipv4-ippool"]
    assert pool["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "tigera-operator"}
    assert pool["spec"]["natOutgoing"] is True and pool["spec"]["ipipMode"] == pool["spec"]["vxlanMode"] == "Never"
    assert condition(emu, "ippools", "Available")["status"] == "True"
    assert emu.store.get(TIGERA, "APIServer", "default") is None
    assert emu.store.get(TIGERA, "TigeraStatus", "apiserver") is None


def test_without_the_api_server_nat_outgoing_is_refused_in_the_dry_and_the_real_run(built, emu, caplog):
    caplog.set_level(logging.INFO)
    lab = with_settings(built, calico_pool_nat_outgoing="Disabled")
    before = emu.store.get(TIGERA, "Installation", "default")["metadata"]["resourceVersion"]

    dry = calico_phase(lab, diff=True)
    assert "-      natOutgoing: Enabled\n+      natOutgoing: Disabled" in caplog.text
    assert "the operator cannot apply this change: IPPool default-ipv4-ippool (198.19.16.0/21): natOutgoing true -> false" in caplog.text
    assert all(way in caplog.text for way in WAYS_FORWARD)
    assert dry.state.ops  # planned, nothing executed

    caplog.clear()
    run = calico_phase(lab)
    execute(run)
    results = op_results(run)
    assert results["Calico: apply the Installation"] == "error"
    assert results["Calico: IP pools as set, tigerastatus/ippools Available"] == "not run"
    assert "apply installation manifest failed on @local: Installation ipPools: the operator cannot apply" in caplog.text
    assert all(way in caplog.text for way in WAYS_FORWARD)
    # nothing changed: not the Installation, not the pool, and ippools was not made Degraded
    assert emu.store.get(TIGERA, "Installation", "default")["metadata"]["resourceVersion"] == before
    assert pools(emu)["default-ipv4-ippool"]["spec"]["natOutgoing"] is True
    assert condition(emu, "ippools", "Degraded")["status"] == "False"


def test_with_the_api_server_nat_outgoing_is_applied_and_waited_for(built, emu, caplog):
    caplog.set_level(logging.INFO)
    lab = with_settings(built, calico_pool_nat_outgoing="Disabled", calico_apiserver="Enabled")

    calico_phase(lab, diff=True)
    assert "+kind: APIServer" in caplog.text or "apiserver.operator.tigera.io/default" in caplog.text
    assert "the operator will apply this through the Calico API server: IPPool default-ipv4-ippool (198.19.16.0/21): natOutgoing true -> false" in caplog.text

    run = calico_phase(lab)
    execute(run)
    results = op_results(run)
    assert "error" not in results.values() and "not run" not in results.values(), results
    assert results["Calico: apply the APIServer (Calico API server)"] == "changed"
    assert results["Calico: tigerastatus/apiserver Available"] in ("changed", "no change")
    assert pools(emu)["default-ipv4-ippool"]["spec"]["natOutgoing"] is False
    assert condition(emu, "ippools", "Available")["status"] == "True"
    assert condition(emu, "apiserver", "Available")["status"] == "True"

    again = calico_phase(lab)
    assert not any(d.operation_meta.will_change for d in again.state.ops[again.host].values())


def test_a_new_cidr_with_the_api_server_replaces_the_pool(built, emu, caplog):
    caplog.set_level(logging.INFO)
    lab = with_settings(built, calico_pool_cidr=ipaddress.IPv4Network("198.19.16.0/22"), calico_apiserver="Enabled")
    run = calico_phase(lab)
    assert "IPPool ipv4-ippool-198-19-16-0-22 (198.19.16.0/22) created" in caplog.text
    assert "IPPool default-ipv4-ippool (198.19.16.0/21) deleted" in caplog.text
    assert "Running pods keep their addresses from the old pool until they are recreated" in caplog.text
    execute(run)
    assert "error" not in op_results(run).values(), op_results(run)
    assert list(pools(emu)) == ["ipv4-ippool-198-19-16-0-22"]
    assert pools(emu)["ipv4-ippool-198-19-16-0-22"]["spec"]["cidr"] == "198.19.16.0/22"
    assert condition(emu, "ippools", "Available")["status"] == "True"


def test_a_new_cidr_without_the_api_server_is_refused(built, emu, caplog):
    caplog.set_level(logging.INFO)
    lab = with_settings(built, calico_pool_cidr=ipaddress.IPv4Network("198.19.16.0/22"))
    run = calico_phase(lab)
    execute(run)
    assert op_results(run)["Calico: apply the Installation"] == "error"
    assert "keep their addresses from the old pool" in caplog.text and WAYS_FORWARD[0] in caplog.text
    assert list(pools(emu)) == ["default-ipv4-ippool"]


def test_a_block_size_change_is_refused_before_any_operation(built, emu):
    lab = with_settings(built, calico_pool_block_size=24)
    run = Run()
    with ctx_state.use(run.state), ctx_host.use(run.host), pytest.raises(PyinfraError) as refused:
        tasks.calico.install(lab)
    assert "calico_pool_block_size: 24 differs from the live IPPool default-ipv4-ippool (198.19.16.0/21)" in str(refused.value)
    assert "Keep calico_pool_block_size=26" in str(refused.value)
    assert not run.state.ops[run.host], "no operation was planned"
    assert pools(emu)["default-ipv4-ippool"]["spec"]["blockSize"] == 26


def test_an_installation_changed_behind_calicolab_leaves_ippools_degraded_and_the_wait_says_why(built, emu, caplog):
    """What the refusal avoids: the emulated operator keeps the pool and reports Degraded."""
    caplog.set_level(logging.INFO)
    changed = yaml.safe_load(render_manifest(with_settings(built, calico_pool_nat_outgoing="Disabled"), "installation"))
    emu.store.patch_obj(TIGERA, "Installation", "default", {"spec": changed["spec"]})
    run = Run()
    meta = run.add(kubernetes.pools_as_set, installation_yaml=render_manifest(with_settings(
        built, calico_pool_nat_outgoing="Disabled"), "installation"), lab=built, timeout=5)
    assert meta.will_change
    run.execute()
    assert not meta.did_succeed()
    assert condition(emu, "ippools", "Degraded")["message"] == "Unable to modify IP pools while Calico API server is unavailable"
    assert pools(emu)["default-ipv4-ippool"]["spec"]["natOutgoing"] is True
    assert "tigerastatus/ippools Degraded: ResourceNotReady: Unable to modify IP pools" in caplog.text
    assert WAYS_FORWARD[0] in caplog.text
