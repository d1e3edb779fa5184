"""Parsing of Multipass and cloud-init outputs (recorded in tests/data/multipass/)."""

from pathlib import Path

import pytest

from pyinfra.api.exceptions import FactProcessError

from calicolab import multipass as mp
from calicolab.facts.multipass import (
    FINGERPRINT_MISSING,
    FirstBoot,
    MultipassInstances,
    first_boot_command,
)

DATA = Path(__file__).parent / "data" / "multipass"


def lines(name):
    return (DATA / name).read_text().splitlines()


# --- MultipassInstances ------------------------------------------------------------------------


def test_instances_command_and_requires_command():
    fact = MultipassInstances()
    assert fact.command() == "multipass list --format json"
    assert fact.requires_command() == "multipass"
    assert fact.command(multipass_bin="/snap/bin/multipass") == "/snap/bin/multipass list --format json"
    assert fact.requires_command(multipass_bin="snap run multipass") == "snap"
    assert fact.command(multipass_bin="'/opt/my dir/multipass'") == "'/opt/my dir/multipass' list --format json"


def test_instances_default_is_empty_dict():
    assert MultipassInstances.default() == {}


def test_instances_empty_list():
    assert MultipassInstances().process(lines("list_empty.json")) == {}


def test_instances_old_release_format():
    result = MultipassInstances().process(lines("list_old_release.json"))
    assert result == {
        "control": {"state": "Running", "ipv4": ["10.168.32.2", "198.19.0.1"], "release": "20.04 LTS"},
        "node1": {"state": "Stopped", "ipv4": [], "release": "20.04 LTS"},
    }


def test_instances_new_release_format_and_extra_addresses():
    result = MultipassInstances().process(lines("list_lab_running.json"))
    assert set(result) == {"control", "node1", "node2", "host1", "primary"}
    assert result["control"]["release"] == "Ubuntu 24.04.1 LTS"
    # management address first, then every other global address (lab, Calico tunnel...)
    assert result["control"]["ipv4"] == ["10.80.0.11", "198.19.0.1", "198.19.16.128"]


def test_instances_every_state():
    result = MultipassInstances().process(lines("list_all_states.json"))
    states = {info["state"] for info in result.values()}
    assert states == set(mp.STATES)
    assert result["node1"] == {"state": "Stopped", "ipv4": [], "release": "Not Available"}
    assert result["delayed"]["state"] == "Delayed Shutdown"


def test_instances_main_branch_zone_is_ignored():
    result = MultipassInstances().process(lines("list_main_zone.json"))
    assert result == {"control": {"state": "Running", "ipv4": ["10.80.0.11"], "release": "Ubuntu 24.04 LTS"}}


@pytest.mark.parametrize(
    "output, message",
    [
        (["list failed: cannot connect to the multipass socket"], "not JSON"),
        (["{\"instances\": []}"], "expected"),
        (["{\"list\": [{\"state\": \"Running\"}]}"], "without a name"),
        (["{\"list\": [{\"name\": \"x\"}]}"], "no state"),
        (["{\"list\": [{\"name\": \"x\", \"state\": \"Running\", \"ipv4\": \"1.2.3.4\"}]}"], "ipv4"),
        (["{\"list\": [1]}"], "not an object"),
    ],
)
def test_instances_malformed_output_raises_fact_process_error(output, message):
    with pytest.raises(FactProcessError, match=message):
        MultipassInstances().process(output)


# --- cloud-init ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, status",
    [
        ("cloud_init_status_long_done.txt", "done"),
        ("cloud_init_status_long_error.txt", "error"),
        ("cloud_init_status_long_running.txt", "running"),
        ("cloud_init_status_old_done.txt", "done"),
        ("cloud_init_status_disabled.txt", "disabled"),
    ],
)
def test_cloud_init_status(name, status):
    assert FirstBoot().process(lines(name))["status"] == status


def test_cloud_init_status_long_fields():
    result = FirstBoot().process(lines("cloud_init_status_long_error.txt"))
    assert result["status"] == "error"
    assert result["extended_status"] == "error - done"
    assert "DataSourceNoCloud" in result["detail"]
    assert "Runparts" in result["raw"]
    old = FirstBoot().process(lines("cloud_init_status_old_done.txt"))
    assert old["detail"] == "DataSourceNoCloud [seed=/dev/sr0][dsmode=net]"


def test_no_status_line_means_no_status_not_a_guess():
    assert FirstBoot().process(["sh: cloud-init: not found"])["status"] is None
    assert FirstBoot().process([]) == {"status": None, "fingerprint": None, "raw": ""}


def fake_cloud_init(tmp_path, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "cloud-init"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def run_first_boot(command, env=None):
    import subprocess

    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, "cloud-init's own exit code (1 error, 2 recoverable) must not fail the fact"
    return FirstBoot().process(result.stdout.splitlines())


@pytest.mark.parametrize("rc", [1, 2])
def test_first_boot_command_exits_zero_whatever_cloud_init_says(tmp_path, rc):
    env = fake_cloud_init(tmp_path, f"cat {DATA / 'cloud_init_status_long_error.txt'}\nexit {rc}\n")
    assert run_first_boot(first_boot_command(), env)["status"] == "error"


def test_a_recoverable_error_is_done_whatever_the_exit_code(tmp_path):
    # cloud-init 23.4+: "degraded done", exit 2 (Ubuntu's own packages keep exit 0)
    env = fake_cloud_init(tmp_path, """cat <<'STATUS'
status: done
extended_status: degraded done
boot_status_code: enabled-by-generator
detail: DataSourceNoCloud [seed=/dev/sr0]
errors: []
recoverable_errors:
WARNING:
	- Unknown key 'frobnicate'
STATUS
exit 2
""")
    boot = run_first_boot(first_boot_command(wait=5), env)
    assert boot["status"] == "done" and boot["extended_status"] == "degraded done"


def test_the_wait_returns_when_cloud_init_finishes_and_gives_up_at_its_timeout(tmp_path):
    flag = tmp_path / "finished"
    # like cloud-init: --wait prints dots while it runs, then the status
    env = fake_cloud_init(tmp_path, f"""case "$*" in *--wait*) while [ ! -e {flag} ]; do printf .; sleep 0.1; done; echo;; esac
[ -e {flag} ] && cat {DATA / 'cloud_init_status_long_done.txt'} || cat {DATA / 'cloud_init_status_long_running.txt'}
""")
    assert run_first_boot(first_boot_command(), env)["status"] == "running"
    gave_up = run_first_boot(first_boot_command(wait=1), env)
    assert gave_up["status"] == "running", "ended by its timeout: cloud-init is still running"
    flag.touch()
    done = run_first_boot(first_boot_command(wait=30), env)
    assert done["status"] == "done" and not done["raw"].startswith(".")


def test_the_fingerprint_is_read_with_the_status_and_tells_missing_from_not_yet(tmp_path):
    env = fake_cloud_init(tmp_path, f"cat {DATA / 'cloud_init_status_long_done.txt'}\n")
    target = tmp_path / "user-data.sha256"
    finished = tmp_path / "boot-finished"
    command = first_boot_command(path=str(target), boot_finished=str(finished))
    assert run_first_boot(command, env)["fingerprint"] is None, "first boot not finished: nothing to judge yet"
    finished.touch()
    assert run_first_boot(command, env)["fingerprint"] == FINGERPRINT_MISSING, "finished without the file: older VM"
    target.write_text("ab" * 32 + "\n")
    both = run_first_boot(command, env)
    assert both["fingerprint"] == "ab" * 32 and both["status"] == "done"
    assert "/etc/calicolab/user-data.sha256" in first_boot_command()


# --- error classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, rc, kind",
    [
        ("err_daemon_down.txt", 2, "daemon-down"),
        ("err_daemon_down.txt", 3, "daemon-down"),
        ("err_launch_exists.txt", 2, "already-exists"),
        ("err_bad_image.txt", 2, "bad-image"),
        ("err_launch_timeout.txt", 2, "timeout"),
        ("err_start_deleted.txt", 2, "deleted"),
        ("err_info_missing.txt", 2, "does-not-exist"),
        ("err_cloud_init.txt", 1, "cloud-init"),
    ],
)
def test_classify_error(name, rc, kind):
    assert mp.classify_error(rc, b"", (DATA / name).read_bytes()).kind == kind


def test_classify_client_timeout_by_exit_code():
    assert mp.classify_error(5, "", "Timed out waiting for instance launch.").kind == "timeout"
    assert mp.classify_error(5, "", "").kind == "timeout"
    assert mp.classify_error(9, "", "").message == "exit code 9"


def test_explain_failure_names_vm_and_message():
    failure = mp.classify_error(2, "", (DATA / "err_launch_exists.txt").read_text())
    text = mp.explain_failure("launch", "control", failure)
    assert text.startswith("launch control failed: launch failed: instance \"control\" already exists")
    # it may be another run's VM being built: look and wait first, delete only what nobody uses
    assert "another calicolab run or another process may be creating it right now" in text
    assert "Check `multipass list` and wait for that run to finish" in text
    assert "only if nothing uses control, remove it (`multipass delete --purge control`)" in text


@pytest.mark.parametrize("file,action", [
    ("err_launch_exists.txt", "launch"), ("err_launch_timeout.txt", "launch"), ("err_bad_image.txt", "launch"),
    ("err_cloud_init.txt", "launch"), ("err_daemon_down.txt", "start"), ("err_start_deleted.txt", "start"),
    ("err_info_missing.txt", "start"),
])
def test_every_failure_ends_with_the_next_thing_to_try(file, action):
    failure = mp.classify_error(2, "", (DATA / file).read_text())
    text = mp.explain_failure(action, "node1", failure, multipass_bin="/snap/bin/multipass")
    message, _, hint = text.partition(". Next: ")
    assert message == f"{action} node1 failed: {failure.message}"
    assert "`" in hint, hint  # a command to paste
    if failure.kind not in ("daemon-down", "cloud-init"):
        assert "`/snap/bin/multipass " in hint or "--data " in hint, hint  # the lab's own client or a setting
    assert hint.rstrip().endswith(("re-run the deploy", "re-run", "run again", "launches it")), hint


def test_an_unknown_failure_still_says_what_to_try():
    text = mp.explain_failure("launch", "node2", mp.classify_error(2, "", "launch failed: Remote \"\" is unknown"))
    assert "Next: check `multipass list` and `multipass info node2` and the free memory and disk" in text


@pytest.mark.parametrize("file,module,error", [
    ("cloud_init_status_long_error.txt", "scripts_user",
     "RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands')"),
    ("cloud_init_status_old_error.txt", "bootcmd", 'ProcessExecutionError("Unexpected error while running command.'),
])
def test_cloud_init_failed_module_is_found_in_new_and_old_status_output(file, module, error):
    parsed = FirstBoot().process(lines(file))
    modules = mp.cloud_init_failed_modules(parsed)
    assert [m for m, _ in modules] == [module]
    assert modules[0][1].startswith(error)


def test_cloud_init_error_message_names_module_log_and_recreate_command():
    parsed = FirstBoot().process(lines("cloud_init_status_long_error.txt"))
    text = mp.cloud_init_error_message("node2", parsed)
    first, *rest = text.splitlines()
    assert first == ("cloud-init failed in node2 (status: error), module scripts_user (the runcmd commands): "
                     "RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands')")
    assert "`multipass exec node2 -- sudo tail -n 50 /var/log/cloud-init-output.log`" in text
    assert rest[-1] == ("Next: fix the cause (a setting or the network), then cloud-init runs only on a VM's first "
                        "boot: recreate node2 with `multipass delete --purge node2`, then re-run the deploy "
                        "(it launches node2 again)")
    done = FirstBoot().process(lines("cloud_init_status_long_done.txt"))
    assert mp.cloud_init_failed_modules(done) == []
