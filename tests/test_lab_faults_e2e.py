"""End to end, faults: the real ``pyinfra inventory.py deploy.py`` CLI (stdin closed) against the test lab.

* a failed VM launch ends the run at the next phase boundary, naming the VM and Multipass' message, without
  any later step waiting for it; a re-run without the fault converges;
* a VM left Suspended (the laptop slept, also in the middle of its launch) comes back in one re-run;
* drift is judged by the fingerprint calicolab's user-data wrote, whatever each Multipass version adds to the
  user-data (the double's ``user_data_rewrite`` variants): no warning on a fresh lab or a re-run, a real
  change is still reported, an older VM without the fingerprint gets one note.

The tests run in order on one lab. Root only.
"""

from __future__ import annotations

import pytest

from tests.test_lab_e2e import VMS, Lab, assert_lab_healthy, lab_session

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]

DRIFT = "was created from a different cloud-init user-data"
NO_FINGERPRINT = "has no calicolab fingerprint"
#: far longer than the test lets a run take: a wait that ran out would show as a timed-out run
LONG_TIMEOUTS = {name: 3000 for name in (
    "timeout_cloud_init", "timeout_k3s_ready", "timeout_operator_ready", "timeout_calico_available",
    "timeout_nodes_ready", "timeout_rollout", "timeout_app_answer")}
RUN_LIMIT = 600
LAUNCH_FAILURE = "The following errors occurred:\nnode2: failed to download image: connection reset by peer"


class FaultLab(Lab):
    """``Lab`` (deploys run with stdin closed, as from a script or CI) that gives a run at most RUN_LIMIT."""

    def deploy(self, *args: str, data: dict | None = None, timeout: float = RUN_LIMIT):
        return super().deploy(*args, data=data, timeout=timeout)

    def purge_vms(self) -> None:
        for name in VMS:
            if name in self.instances():
                assert self.netlab.multipass("delete", "--purge", name).returncode == 0


@pytest.fixture(scope="module")
def lab():
    with lab_session(FaultLab) as lab:
        yield lab


def output_of(result) -> str:
    return result.stdout + result.stderr


def why_failed(result) -> str:
    """For an assertion message: the report card's failed rows and the errors, then the output's end."""
    text = output_of(result)
    lines = [line for line in text.splitlines() if line.startswith("FAIL") or "rror" in line]
    return "\n".join(lines[-40:]) + "\n...\n" + text[-3000:]


def test_a_failed_launch_ends_the_run_at_the_next_phase_boundary_and_a_rerun_converges(lab):
    lab.netlab.set_faults({"fail": {"launch:node2": LAUNCH_FAILURE}})
    # with every timeout far beyond RUN_LIMIT, a step waiting for node2 would make the run time out here
    failed = lab.deploy("-y", data=LONG_TIMEOUTS)
    output = output_of(failed)
    assert failed.returncode != 0
    assert "node2: failed to download image: connection reset by peer" in output
    assert 'Run stopped at "── phase: VMs running ──"' in output
    cause = next(line for line in output.splitlines() if "cause: [@local]" in line)
    assert "launch node2 failed" in cause and "connection reset by peer" in cause
    assert "k3s server" not in output and "Calico" not in output, "nothing after the boundary started"
    assert "node2" not in lab.instances()

    lab.netlab.set_faults({})
    resumed = lab.deploy("-y", data=LONG_TIMEOUTS)
    assert resumed.returncode == 0, output_of(resumed)[-3000:]
    assert "Run stopped" not in output_of(resumed)
    assert_lab_healthy(lab)


def test_a_suspended_vm_comes_back_in_one_rerun(lab):
    for name in ("node2", "control"):
        suspend = lab.netlab.multipass("suspend", name)
        assert suspend.returncode == 0, suspend.stderr
    assert lab.instances()["node2"] == "Suspended"

    # a resumed VM does not answer at once (its network and sshd wake up first)
    lab.netlab.set_faults({"answer_after_resume": 10})
    result = lab.deploy("-y", data=LONG_TIMEOUTS)
    lab.netlab.set_faults({})
    output = output_of(result)
    assert result.returncode == 0, output[-3000:]
    assert "node2 is Suspended: it will be started" in output
    assert "control is Suspended: it will be started" in output
    assert_lab_healthy(lab)


def test_a_vm_suspended_during_its_launch_comes_back_in_one_rerun(lab):
    assert lab.netlab.multipass("delete", "--purge", "host1").returncode == 0
    lab.netlab.set_faults({"suspend_during_launch": ["host1"]})
    failed = lab.deploy("-y", data=LONG_TIMEOUTS)
    lab.netlab.set_faults({})
    output = output_of(failed)
    assert failed.returncode != 0
    assert "launch host1 failed: timed out and host1 is Suspended" in output
    assert 'Run stopped at "── phase: VMs running ──"' in output
    assert lab.instances()["host1"] == "Suspended"

    result = lab.deploy("-y", data=LONG_TIMEOUTS)
    output = output_of(result)
    assert result.returncode == 0, output[-3000:]
    assert "host1 is Suspended: it will be started" in output
    assert_lab_healthy(lab)


# The two rewrites that change calicolab's user-data (it has `packages`, and no `users` or keys for
# the others to extend); each purges and rebuilds the lab, so the no-op variants are left out.
@pytest.mark.parametrize("rewrite", ["pollinate", "sshfs"])
def test_no_drift_warning_whatever_multipass_adds_but_a_real_change_is_reported(lab, rewrite):
    lab.purge_vms()
    lab.netlab.set_faults({"user_data_rewrite": rewrite})
    built = lab.deploy("-y")
    assert built.returncode == 0, why_failed(built)
    if rewrite in ("pollinate", "sshfs"):  # the double really changed what cloud-init got
        stored = lab.vm("node1", "sudo cat /var/lib/cloud/instance/user-data.txt")
        assert f"- {rewrite}" in stored

    again = lab.deploy("-y")
    assert again.returncode == 0, why_failed(again)
    for result in (built, again):
        assert DRIFT not in output_of(result) and NO_FINGERPRINT not in output_of(result)

    changed = lab.deploy("--dry", data={"tcp_mss": 1200})
    assert changed.returncode == 0, output_of(changed)[-3000:]
    for name in VMS:
        assert f"{name} {DRIFT}" in output_of(changed)
        assert f"teardown.py --limit {name}" in output_of(changed)


def test_a_vm_from_before_fingerprints_gets_one_note_not_an_error(lab):
    lab.vm("host1", "sudo rm /etc/calicolab/user-data.sha256")
    result = lab.deploy("-y")
    output = output_of(result)
    assert result.returncode == 0, output[-3000:]
    notes = [line for line in output.splitlines() if NO_FINGERPRINT in line]
    assert len(notes) == 1 and "host1" in notes[0] and "teardown.py --limit host1" in notes[0]
    assert DRIFT not in output
