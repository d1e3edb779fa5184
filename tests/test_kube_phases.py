"""The Calico and YaoBank phases (tasks/calico.py, tasks/app.py) end to end with the real rendered
manifests, against the API emulator with fake controllers (operator, deployment controller, kubelets)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

import tasks.app
import tasks.calico
from calicolab.kube import waits
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host, ctx_state
from tests.support.kubeapi import Emulator
from tests.support.kubeapi.controllers import FakeCluster
from tests.test_kube_ops import Run, loopback_only, make_lab  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def emu():
    emulator = Emulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def lab(tmp_path, emu, monkeypatch):
    emu.write_kubeconfig(tmp_path / "kubeconfig.yaml")
    # the phases run on control; the in-process test host is @local
    monkeypatch.setattr(tasks.calico, "SERVER", "@local")
    monkeypatch.setattr(tasks.app, "SERVER", "@local")
    return make_lab(tmp_path, emu.port, timeout_operator_ready=10, timeout_calico_available=10,
                    timeout_nodes_ready=10, timeout_rollout=10)


def phases(run: Run, lab) -> list:
    with ctx_state.use(run.state), ctx_host.use(run.host):
        tasks.calico.install(lab)
        tasks.app.deploy(lab)
    return [meta for meta in run.state.ops[run.host].values()]


def execute(run: Run):
    try:
        run.execute()
    except PyinfraError as exc:
        assert "No hosts remaining" in str(exc)


def op_results(run: Run) -> dict[str, str]:
    out = {}
    for op_hash in run.state.get_op_order():
        name = next(iter(run.state.op_meta[op_hash].names))
        data = run.state.ops[run.host].get(op_hash)
        meta = data.operation_meta
        if not meta.is_complete():
            out[name] = "not run"
        elif not meta.did_succeed():
            out[name] = "error"
        else:
            out[name] = "changed" if meta.did_change() else "no change"
    return out


def test_fresh_cluster_dry_run_then_build_then_no_change(lab, emu, caplog):
    caplog.set_level(logging.INFO)
    with FakeCluster(emu, calico_delay=0.3):
        dry = Run(diff=True)
        phases(dry, lab)
        plan = {next(iter(dry.state.op_meta[h].names)): d.operation_meta.will_change
                for h, d in dry.state.ops[dry.host].items()}
        assert all(plan.values()), plan
        assert "--- live deployment.apps/tigera-operator -n tigera-operator (absent: will create)" in caplog.text
        assert emu.store.get("v1", "Namespace", "tigera-operator") is None  # Prepare wrote nothing

        build = Run()
        phases(build, lab)
        execute(build)
        results = op_results(build)
        assert "error" not in results.values() and "not run" not in results.values(), results
        appliers = [name for name in results if "apply" in name]
        assert len(appliers) == 3 and all(results[name] == "changed" for name in appliers), results
        assert emu.store.get("operator.tigera.io/v1", "Installation", "default") is not None

        caplog.clear()
        again = Run()
        phases(again, lab)
        assert not any(d.operation_meta.will_change for d in again.state.ops[again.host].values())
        execute(again)
        assert set(op_results(again).values()) == {"no change"}, op_results(again)


def test_degraded_calico_stops_the_phase(lab, emu, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(waits, "DEGRADED_GRACE", 0.3)
    with FakeCluster(emu, calico="degraded", calico_delay=0.1, degraded_message="calico-node: pod failed (CrashLoopBackOff)"):
        run = Run()
        phases(run, lab)
        execute(run)
    results = op_results(run)
    assert results["Calico: tigerastatus/calico Available"] == "error"
    assert results["Calico: nodes Ready"] == "not run"
    assert "tigerastatus/calico Degraded: PodFailure: calico-node: pod failed (CrashLoopBackOff)" in caplog.text


def test_operator_progress_deadline(lab, emu, caplog):
    caplog.set_level(logging.INFO)
    with FakeCluster(emu, operator="deadline"):
        run = Run()
        phases(run, lab)
        execute(run)
    results = op_results(run)
    assert results["Calico: apply the tigera-operator manifest (server-side)"] == "changed"
    assert results["Calico: tigera-operator deployment rolled out"] == "error"
    assert 'error: deployment "tigera-operator" exceeded its progress deadline' in caplog.text
    assert "has timed out progressing" in caplog.text


def test_yaobank_deployment_never_available_times_out(lab, emu, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    lab = dataclasses.replace(lab, timeout_rollout=1)
    with FakeCluster(emu, calico_delay=0.1, deployment_modes={"yaobank/database": "never"}):
        run = Run()
        phases(run, lab)
        execute(run)
    results = op_results(run)
    assert results["YaoBank: deployments rolled out"] == "error"
    assert ('timed out waiting for the condition after 1s: Waiting for deployment "database" rollout to finish: '
            "0 of 1 updated replicas are available...") in caplog.text
    assert "deployment/database -n yaobank: Available=False (MinimumReplicasUnavailable" in caplog.text
