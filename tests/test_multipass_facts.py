"""Parsing of Multipass and cloud-init outputs (recorded in tests/data/multipass/)."""

from pathlib import Path

import pytest

from pyinfra.api.exceptions import FactProcessError

from calicolab import multipass as mp
from calicolab.facts.multipass import (
    CloudInitStatus,
    CloudInitStatusLong,
    CloudInitUserDataHash,
    MultipassInstanceInfo,
    MultipassInstances,
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
    assert mp.release_version(result["control"]["release"]) == "20.04"


def test_instances_new_release_format_and_extra_addresses():
    result = MultipassInstances().process(lines("list_lab_running.json"))
    assert set(result) == {"control", "node1", "node2", "host1", "primary"}
    assert result["control"]["release"] == "Ubuntu 24.04.1 LTS"
    assert mp.release_version(result["control"]["release"]) == "24.04"
    # management address first, then every other global address (lab, Calico tunnel...)
    assert result["control"]["ipv4"] == ["10.80.0.11", "198.19.0.1", "198.19.16.128"]
    assert mp.release_version("Not Available") is None


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


# --- MultipassInstanceInfo -----------------------------------------------------------------------


def test_info_command_exits_zero_for_missing_instance(tmp_path):
    import subprocess

    fake = tmp_path / "multipass"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$2" = control ]; then cat {DATA / "info_running.json"}; exit 0; fi\n'
        f'if [ "$2" = nosuch ]; then cat {DATA / "err_info_missing.txt"} >&2; exit 2; fi\n'
        "echo 'info failed: cannot connect to the multipass socket' >&2; exit 2\n"
    )
    fake.chmod(0o755)
    fact = MultipassInstanceInfo()
    run = lambda name: subprocess.run(  # noqa: E731
        fact.command(instance=name, multipass_bin=str(fake)), shell=True, capture_output=True, text=True
    )
    missing = run("nosuch")
    assert (missing.returncode, missing.stdout) == (0, "")
    present = run("control")
    assert present.returncode == 0
    fact.command(instance="control", multipass_bin=str(fake))
    assert fact.process(present.stdout.splitlines())["cpu_count"] == "2"
    down = run("other")
    assert down.returncode == 2 and "cannot connect" in down.stderr


def test_info_rejects_bad_names():
    with pytest.raises(ValueError):
        MultipassInstanceInfo().command(instance="-rf")


def test_info_running_types():
    fact = MultipassInstanceInfo()
    fact.command(instance="control")
    info = fact.process(lines("info_running.json"))
    assert info["state"] == "Running"
    assert info["cpu_count"] == "2" and isinstance(info["cpu_count"], str)
    assert info["memory"] == {"total": 2012659712, "used": 241172480}
    assert info["disks"] == {"sda1": {"total": "10213466112", "used": "2147483648"}}
    assert info["ipv4"] == ["10.80.0.11", "198.19.0.1"]
    assert info["release"] == "Ubuntu 24.04.1 LTS"
    assert info["image_release"] == "24.04 LTS"


def test_info_old_shape_with_mounts():
    fact = MultipassInstanceInfo()
    fact.command(instance="foo")
    info = fact.process(lines("info_old_running.json"))
    assert info["memory"]["total"] == 1503238554
    assert info["mounts"]["foo"]["source_path"] == "/home/user/foo"


def test_info_stopped_shape():
    fact = MultipassInstanceInfo()
    fact.command(instance="node1")
    info = fact.process(lines("info_stopped.json"))
    assert info == {
        "state": "Stopped",
        "cpu_count": "",
        "memory": {},
        "disks": {"sda1": {}},
        "ipv4": [],
        "load": [],
        "release": "",
        "image_release": "24.04 LTS",
        "image_hash": "b63f266fa4bdb146dee6f4a8a5b4f4a11b5a6c4b5b54a2f8d2b1e3c7e8f9a0b1",
        "mounts": {},
        "snapshot_count": "0",
    }


def test_info_other_instance_is_none():
    fact = MultipassInstanceInfo()
    fact.command(instance="node2")
    assert fact.process(lines("info_stopped.json")) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"errors": [], "info": {"x": {"state": "Running", "memory": {"total": "1"}}}}', "memory"),
        ('{"errors": [], "info": {"x": {"state": "Running", "disks": {"sda1": {"total": 5}}}}}', "disk"),
        ('{"errors": [], "info": {"x": {"state": "Running", "cpu_count": 1}}}', "cpu_count"),
        ('{"errors": ["boom"], "info": {}}', "errors"),
        ('{"list": []}', "expected"),
        ("", "empty"),
    ],
)
def test_info_malformed(text, message):
    with pytest.raises(FactProcessError, match=message):
        MultipassInstanceInfo().process(text.splitlines() or [""])


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
    assert CloudInitStatus().process(lines(name)) == status


def test_cloud_init_status_long_fields():
    result = CloudInitStatusLong().process(lines("cloud_init_status_long_error.txt"))
    assert result["status"] == "error"
    assert result["extended_status"] == "error - done"
    assert "DataSourceNoCloud" in result["detail"]
    assert "Runparts" in result["raw"]
    old = CloudInitStatusLong().process(lines("cloud_init_status_old_done.txt"))
    assert old["detail"] == "DataSourceNoCloud [seed=/dev/sr0][dsmode=net]"


def test_cloud_init_status_garbage():
    with pytest.raises(FactProcessError):
        CloudInitStatus().process(["sh: cloud-init: not found"])


def test_cloud_init_status_command_always_exits_zero(tmp_path):
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cloud-init"
    fake.write_text(f"#!/bin/sh\ncat {DATA / 'cloud_init_status_long_error.txt'}\nexit 1\n")
    fake.chmod(0o755)
    result = subprocess.run(
        CloudInitStatus().command(), shell=True, capture_output=True, text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert result.returncode == 0
    assert CloudInitStatus().process(result.stdout.splitlines()) == "error"
    assert CloudInitStatus().requires_command() == "cloud-init"


def test_user_data_hash_survives_multipass_reserialisation():
    stored = CloudInitUserDataHash().process(lines("user_data_multipass.txt"))
    rendered = (DATA / "user_data_rendered.yaml").read_text()
    assert stored == mp.user_data_digest(rendered)
    changed = rendered.replace("bird2", "bird3")
    assert stored != mp.user_data_digest(changed)


def test_user_data_hash_command(tmp_path):
    import subprocess

    fact = CloudInitUserDataHash()
    missing = subprocess.run(fact.command(path=str(tmp_path / "nope")), shell=True, capture_output=True)
    assert (missing.returncode, missing.stdout) == (0, b"")
    assert fact.default() is None
    target = tmp_path / "user-data.txt"
    target.write_text("#cloud-config\npackages: [x]\n")
    present = subprocess.run(fact.command(path=str(target)), shell=True, capture_output=True, text=True)
    assert fact.process(present.stdout.splitlines()) == mp.user_data_digest("packages: [x]")
    assert "/var/lib/cloud/instance/user-data.txt" in fact.command()


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
    parsed = CloudInitStatusLong().process(lines(file))
    modules = mp.cloud_init_failed_modules(parsed)
    assert [m for m, _ in modules] == [module]
    assert modules[0][1].startswith(error)


def test_cloud_init_error_message_names_module_log_and_recreate_command():
    parsed = CloudInitStatusLong().process(lines("cloud_init_status_long_error.txt"))
    text = mp.cloud_init_error_message("node2", parsed)
    first, *rest = text.splitlines()
    assert first == ("cloud-init failed in node2 (status: error), module scripts_user (the runcmd commands): "
                     "RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands')")
    assert "`multipass exec node2 -- sudo tail -n 50 /var/log/cloud-init-output.log`" in text
    assert rest[-1] == ("Next: fix the cause (a setting or the network), then cloud-init runs only on a VM's first "
                        "boot: recreate node2 with `multipass delete --purge node2`, then re-run the deploy "
                        "(it launches node2 again)")
    done = CloudInitStatusLong().process(lines("cloud_init_status_long_done.txt"))
    assert mp.cloud_init_failed_modules(done) == []
