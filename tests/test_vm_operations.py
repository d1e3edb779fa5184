"""Multipass operations: decisions from fact values, and real runs against a fake `multipass` script."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from pyinfra.api import Config, FunctionCommand, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.context import ctx_host, ctx_state

from calicolab import multipass as mp
from calicolab.operations import barrier as barrier_module
from calicolab.facts.multipass import FINGERPRINT_MISSING
from calicolab.operations import multipass as ops

DATA = Path(__file__).parent / "data" / "multipass"


def spec(name, cloud_init=None):
    return mp.InstanceSpec(name, "24.04", 1, "1G", "5G", cloud_init or f"#cloud-config\nhostname: {name}\n")


SPECS = [spec(n) for n in ("control", "node1", "node2", "host1")]


# --- decisions (operation bodies with a stand-in host) -------------------------------------------


class FakeHost:
    def __init__(self, facts=None, name="@local", data=None, shell=None):
        self.name = name
        self.facts = facts or {}
        self.data = data or {}
        self.noops: list[str] = []
        self.logs: list[str] = []
        self.fact_calls = []
        self.shell = shell or []

    def get_fact(self, cls, *args, **kwargs):
        self.fact_calls.append((cls.__name__, kwargs))
        return self.facts.get(cls.__name__)

    def noop(self, description):
        self.noops.append(description)

    def log(self, message, log_func=None):
        self.logs.append(message)

    def run_shell_command(self, command, **kwargs):
        item = self.shell.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


class FakeState:
    def __init__(self, executing=False, check=True, diff=False):
        self.is_executing = executing
        self._check = check
        self.config = Config()
        self.config.DIFF = diff
        self.inventory = None

    def should_check_for_changes(self):
        return self._check


def run_body(op, fake_host, fake_state=None, **kwargs):
    with ctx_state.use(fake_state or FakeState()), ctx_host.use(fake_host):
        return list(op._inner(**kwargs))


def instances_fact(**states):
    return {"MultipassInstances": {n: {"state": s, "ipv4": [], "release": ""} for n, s in states.items()}}


def test_all_missing_are_planned_for_launch_with_the_configured_client():
    host = FakeHost(instances_fact(), data={"multipass_bin": "/snap/bin/multipass"})
    assert run_body(ops.instances, host, specs=SPECS, launch_timeout=600)
    assert host.fact_calls == [("MultipassInstances", {"multipass_bin": "/snap/bin/multipass"})]
    assert [line.split(" will be launched")[0] for line in host.logs] == ["control", "node1", "node2", "host1"]


def test_dict_specs_and_diff_shows_cloud_init(caplog):
    host = FakeHost(instances_fact(control="Running", node1="Running", node2="Running"))
    specs = [dict(name=s.name, image=s.image, cpus=s.cpus, memory=s.memory, disk=s.disk, cloud_init=s.cloud_init)
             for s in SPECS]
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        assert run_body(ops.instances, host, FakeState(diff=True), specs=specs)
    assert [line.split(" will be launched")[0] for line in host.logs] == ["host1"]
    assert "host1 cloud-init + hostname: host1" in caplog.text


def test_running_is_noop():
    host = FakeHost(instances_fact(control="Running", node1="Running", node2="Running", host1="Running",
                                   other="Stopped"))
    assert run_body(ops.instances, host, specs=SPECS) == []
    assert host.noops == ["Multipass instances control, node1, node2, host1 are running"]


def test_messages_printed_once_per_run():
    host = FakeHost(instances_fact())
    run_body(ops.instances, host, FakeState(executing=True, check=True), specs=SPECS)
    assert host.logs == []  # already shown in Prepare
    run_body(ops.instances, host, FakeState(executing=True, check=False), specs=SPECS)
    assert host.logs  # -y: Prepare skipped the body


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError):
        spec("-rm")
    with pytest.raises(ValueError, match="memory"):
        mp.InstanceSpec("control", "24.04", 1, "lots", "5G", "")
    with pytest.raises(ValueError, match="duplicate"):
        run_body(ops.instances, FakeHost(instances_fact()), specs=[SPECS[0], SPECS[0]])


def test_absent_with_nothing_to_delete_is_no_change():
    none_left = FakeHost(instances_fact(mine="Running"))
    assert run_body(ops.absent, none_left, names=["control"]) == []
    assert none_left.noops


def test_absent_from_a_vm_host_asks_the_workstation():
    local = FakeHost(instances_fact(node1="Running"))
    vm = FakeHost({}, name="node1")
    fake_state = FakeState()
    fake_state.inventory = types.SimpleNamespace(get_host=lambda name, default=None: local)
    assert run_body(ops.absent, vm, fake_state, names=["node1"])
    assert vm.fact_calls == [] and local.fact_calls


def test_launch_argv():
    assert mp.launch_argv("multipass", "control", "24.04", 2, "2G", "10G", 900) == [
        "multipass", "launch", "-n", "control", "-c", "2", "-m", "2G", "-d", "10G",
        "--cloud-init", "-", "--timeout", "900", "24.04",
    ]
    assert mp.delete_argv("multipass", ["node1"]) == ["multipass", "delete", "--purge", "node1"]
    with pytest.raises(ValueError):
        mp.delete_argv("multipass", [])


# --- cloud-init waits and drift -----------------------------------------------------------------------


def test_barrier_is_a_noop():
    host = FakeHost(name="node1")
    assert run_body(barrier_module._phase_boundary, host, boundary="── phase ──") == []
    assert host.noops == ["barrier"]


# --- real runs: pyinfra API + a fake `multipass` on the workstation ------------------------------------

FAKE_MULTIPASS = r'''
import fcntl, json, os, sys, time
D = {directory!r}

def path(name):
    return os.path.join(D, name)

def with_state(change=None):
    with open(path("lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.load(open(path("state.json"))) if os.path.exists(path("state.json")) else {{}}
        if change:
            change(state)
            json.dump(state, open(path("state.json"), "w"))
        return state

def log(*items):
    with open(path("calls.log"), "a") as f:
        f.write(json.dumps([time.time(), *items]) + "\n")

args = sys.argv[1:]
log("call", args)
names = [a for a in args[1:] if not a.startswith("-") and not a.isdigit()]
if os.path.exists(path("daemon-down")):
    sys.stderr.write("list failed: cannot connect to the multipass socket\n")
    sys.exit(3)
if args[0] == "list":
    state = with_state()
    print(json.dumps({{"list": [{{"name": n, "state": s, "ipv4": [], "release": "Ubuntu 24.04 LTS"}}
                              for n, s in state.items()]}}, indent=4))
elif args[0] == "launch":
    name = args[args.index("-n") + 1]
    open(path("cloud-init-" + name), "w").write(sys.stdin.read())
    log("launch-start", name)
    time.sleep(float(open(path("sleep")).read()) if os.path.exists(path("sleep")) else 0.3)
    if os.path.exists(path("fail-" + name)):
        message = open(path("fail-" + name)).read()
        if "timed out" in message:  # canonical/multipass#1757: gave up, but the VM runs
            with_state(lambda s: s.__setitem__(name, "Running"))
        if os.path.exists(path("down-after-launch")):
            open(path("daemon-down"), "w").close()
        sys.stderr.write(message)
        log("launch-end", name)
        sys.exit(2)
    with_state(lambda s: s.__setitem__(name, "Running"))
    log("launch-end", name)
    print("Launched: " + name)
elif args[0] == "start":
    with_state(lambda s: s.update({{n: "Running" for n in names}}))
elif args[0] == "stop" and "--cancel" in args:
    with_state(lambda s: s.update({{n: "Running" for n in names}}))
elif args[0] == "delete":
    with_state(lambda s: [s.pop(n, None) for n in names])
elif args[0] == "exec":
    name = args[1]
    asleep = path("asleep-" + name)  # how many more times exec fails, like a VM whose sshd is not up yet
    if os.path.exists(asleep):
        left = int(open(asleep).read())
        if left > 0:
            open(asleep, "w").write(str(left - 1))
            sys.stderr.write("exec failed: ssh connection failed: 'Timeout connecting to 10.0.0.3'\n")
            sys.exit(2)
    command = args[args.index("--") + 1:]
    env = dict(os.environ, PATH=path("bin") + ":" + os.environ["PATH"], VM=name)
    os.execvpe(command[0], command, env)  # runs here, with a fake cloud-init first on PATH
else:
    sys.stderr.write("unsupported\n")
    sys.exit(9)
'''


@pytest.fixture
def fake_mp(tmp_path):
    script = tmp_path / "multipass"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_MULTIPASS.format(directory=str(tmp_path))))
    script.chmod(0o755)

    class Fake:
        bin = str(script)
        dir = tmp_path

        def set_states(self, **states):
            (tmp_path / "state.json").write_text(json.dumps(states))

        def states(self):
            path = tmp_path / "state.json"
            return json.loads(path.read_text()) if path.exists() else {}

        def calls(self):
            path = tmp_path / "calls.log"
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

        def commands(self):
            return [entry[2][0] for entry in self.calls() if entry[1] == "call"]

    return Fake()


def local_state(fake_mp, names=("@local",)):
    inventory = Inventory((list(names), {"multipass_bin": fake_mp.bin}))
    state = State(inventory, Config())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    return state, inventory.get_host(names[0].split("/")[-1])


def execute(state):
    state.set_stage(StateStage.Execute)
    run_ops(state)


@pytest.mark.parametrize("stopped_state", ["Stopped", "Suspended", "Suspending", "Starting"])
def test_stopped_are_started_and_waited_for_missing_launched(fake_mp, stopped_state):
    fake_mp.set_states(control="Running", node1=stopped_state, node2="Stopped")
    state, host = local_state(fake_mp)
    add_op(state, ops.instances, specs=SPECS, name="Lab VMs")
    execute(state)
    assert state.results[host].success_ops == 1
    assert fake_mp.states() == {n: "Running" for n in ("control", "node1", "node2", "host1")}
    calls = [e[2] for e in fake_mp.calls() if e[1] == "call"]
    assert [c[c.index("-n") + 1] for c in calls if c[0] == "launch"] == ["host1"]
    assert sorted(c[-1] for c in calls if c[0] == "start") == ["node1", "node2"]
    assert sorted(c[1] for c in calls if c[0] == "exec") == ["node1", "node2"]  # each answers once started


def test_started_vms_are_waited_for_until_they_answer(fake_mp, caplog):
    fake_mp.set_states(control="Running", node1="Suspended", node2="Running", host1="Running")
    (fake_mp.dir / "asleep-node1").write_text("2")  # resumed, sshd not up for two tries
    state, host = local_state(fake_mp)
    add_op(state, ops.instances, specs=SPECS, name="Lab VMs")
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        execute(state)
    assert state.results[host].success_ops == 1
    assert [e[2][1] for e in fake_mp.calls() if e[1] == "call" and e[2][0] == "exec"] == ["node1"] * 3
    assert "waiting for node1 to answer" in caplog.text and "Timeout connecting to 10.0.0.3" in caplog.text


def test_a_started_vm_that_never_answers_fails_naming_it(fake_mp, caplog):
    fake_mp.set_states(control="Running", node1="Running", node2="Suspended", host1="Running")
    (fake_mp.dir / "asleep-node2").write_text("1000")
    state, host = local_state(fake_mp)
    add_op(state, ops.instances, specs=SPECS, name="Lab VMs", launch_timeout=1)
    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(PyinfraError, match="No hosts remaining"):
        execute(state)
    assert "node2 was started but does not answer `multipass exec` after 1s" in caplog.text
    assert "Timeout connecting to 10.0.0.3" in caplog.text


def test_delayed_shutdown_is_cancelled(fake_mp):
    fake_mp.set_states(control="Delayed Shutdown", node1="Running", node2="Running", host1="Running")
    state, host = local_state(fake_mp)
    add_op(state, ops.instances, specs=SPECS, name="Lab VMs")
    execute(state)
    assert ["stop", "--cancel", "control"] in [e[2] for e in fake_mp.calls() if e[1] == "call"]
    assert fake_mp.states()["control"] == "Running"


@pytest.mark.parametrize(
    "bad_state, text",
    [
        ("Deleted", "`{bin} recover node2`"),  # the configured client, ready to paste
        ("Unknown", "restart the Multipass daemon"),
        ("Unavailable", "restart the Multipass daemon"),
    ],
)
def test_deleted_and_unknown_fail_cleanly_after_the_others_run(fake_mp, caplog, bad_state, text):
    text = text.format(bin=fake_mp.bin)
    fake_mp.set_states(control="Stopped", node2=bad_state)
    state, host = local_state(fake_mp)
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        add_op(state, ops.instances, specs=SPECS, name="Lab VMs")
    assert text in caplog.text  # shown in the plan
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(PyinfraError, match="No hosts remaining"):
        execute(state)
    assert text in caplog.text and "node2" in caplog.text
    assert fake_mp.states() == {"control": "Running", "node1": "Running", "node2": bad_state, "host1": "Running"}


# --- the cloud-init wait, through the @multipass connector and the fake (its exec runs the command here) -----

WANTED = "ab" * 32


@pytest.fixture
def vm_cloud_init(fake_mp, request):
    """A fake `cloud-init` that the fake exec finds first on PATH: it prints ci-status (a recorded
    `cloud-init status --long`), and with --wait blocks until ci-finished exists, like cloud-init."""
    bin_dir = fake_mp.dir / "bin"
    bin_dir.mkdir()
    status, finished = fake_mp.dir / "ci-status", fake_mp.dir / "ci-finished"
    script = bin_dir / "cloud-init"
    script.write_text(f"""#!/bin/sh
case "$*" in *--wait*) while [ ! -e {finished} ]; do printf .; sleep 0.05; done; echo;; esac
cat {status}
""")
    script.chmod(0o755)

    class CloudInit:
        def shows(self, name, finished_now=True):
            status.write_text((DATA / name).read_text())
            if finished_now:
                finished.touch()

        def finishes_later(self, name, after):
            finisher = subprocess.Popen(["sh", "-c", f"sleep {after}; cp {DATA / name} {status}; touch {finished}"])
            request.addfinalizer(lambda: (finisher.kill(), finisher.wait()))

    return CloudInit()


def run_cloud_init_done(fake_mp, timeout=30):
    state, host = local_state(fake_mp, names=("@multipass/node1",))
    add_op(state, ops.cloud_init_done, fingerprint=WANTED, timeout=timeout, name="cloud-init finished")
    execute(state)
    return state, host


def test_cloud_init_done_is_no_change_when_done(fake_mp, vm_cloud_init):
    fake_mp.set_states(node1="Running")
    vm_cloud_init.shows("cloud_init_status_long_done.txt")
    state, host = local_state(fake_mp, names=("@multipass/node1",))
    meta = add_op(state, ops.cloud_init_done, fingerprint=WANTED, name="cloud-init finished")[host]
    assert not meta.will_change


def test_the_wait_ends_when_cloud_init_finishes_and_rides_out_a_vm_that_does_not_answer(fake_mp, vm_cloud_init, caplog):
    fake_mp.set_states(node1="Running")
    vm_cloud_init.shows("cloud_init_status_long_running.txt", finished_now=False)
    vm_cloud_init.finishes_later("cloud_init_status_long_done.txt", after=1)
    state, host = local_state(fake_mp, names=("@multipass/node1",))
    add_op(state, ops.cloud_init_done, fingerprint=WANTED, timeout=60, name="cloud-init finished")
    (fake_mp.dir / "asleep-node1").write_text("2")  # the VM reboots: two tries fail
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        execute(state)
    assert state.results[host].success_ops == 1 and state.results[host].error_ops == 0
    assert "cloud-init finished" in caplog.text and "node1 does not answer: exec failed" in caplog.text
    waits = [c for c in fake_mp.calls() if c[1] == "call" and c[2][0] == "exec" and "--wait" in c[2][-1]]
    # the fact at execution and the first wait found no answer; the next one waited until cloud-init
    # finished (one command, no polling of the status)
    assert len(waits) == 2


@pytest.mark.parametrize("state_name, status, timeout, expected", [
    ("Running", "cloud_init_status_long_error.txt", 30,
     ["cloud-init failed in node1 (status: error), module scripts_user (the runcmd commands)",
      "Runparts: 1 failures"]),
    ("Running", "cloud_init_status_long_running.txt", 2,
     ["cloud-init in node1 not done after 2s (last status: running)", "Raise timeout_cloud_init"]),
    ("Stopped", "cloud_init_status_long_running.txt", 600, ["instance node1 is not running (state: Stopped)"]),
])
def test_the_wait_fails_naming_the_vm_and_the_cause(fake_mp, vm_cloud_init, caplog, state_name, status, timeout,
                                                     expected):
    fake_mp.set_states(node1=state_name)
    vm_cloud_init.shows(status, finished_now="error" in status)
    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(PyinfraError, match="No hosts remaining"):
        run_cloud_init_done(fake_mp, timeout=timeout)
    assert all(text in caplog.text for text in expected)
    if state_name == "Stopped":  # at once, and never starting it through exec
        assert not [c for c in fake_mp.calls() if c[1] == "call" and c[2][0] == "exec"]


def fingerprint_file_in_vm(fake_mp, text):
    """The fake exec runs here: point the command's fingerprint path at a file of the test's."""
    target = fake_mp.dir / "user-data.sha256"
    if text is not None:
        target.write_text(text)
    return str(target)


@pytest.mark.parametrize("stored, expected", [
    (WANTED, []),
    ("cd" * 32, ["node1 was created from a different cloud-init user-data", "teardown.py --limit node1",
                 "`{bin} delete --purge node1`"]),  # the configured client, ready to paste
])
def test_user_data_drift_is_judged_by_the_fingerprint_and_warns_never_recreates(
        fake_mp, vm_cloud_init, caplog, monkeypatch, stored, expected):
    import calicolab.facts.multipass as facts

    fake_mp.set_states(node1="Running")
    vm_cloud_init.shows("cloud_init_status_long_done.txt")
    monkeypatch.setattr(facts, "USER_DATA_FINGERPRINT_PATH", fingerprint_file_in_vm(fake_mp, stored))
    monkeypatch.setattr(facts.first_boot_command, "__defaults__",
                        (None, facts.USER_DATA_FINGERPRINT_PATH, facts.BOOT_FINISHED_PATH))
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        state, host = run_cloud_init_done(fake_mp)
    assert state.results[host].error_ops == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "user-data" in r.getMessage()]
    if not expected:
        assert warnings == []
    else:
        (warning,) = warnings
        assert all(text.format(bin=fake_mp.bin) in warning for text in expected)
    assert [c for c in fake_mp.calls() if c[1] == "call" and c[2][0] == "launch"] == []  # never recreates


def test_prepare_only_reads(fake_mp):
    fake_mp.set_states(node1="Stopped")
    state, host = local_state(fake_mp)
    meta = add_op(state, ops.instances, specs=SPECS, name="Lab VMs")[host]
    assert meta.will_change
    assert fake_mp.commands() == ["list"]  # like --dry: nothing launched or started
    assert fake_mp.states() == {"node1": "Stopped"}


def test_launches_run_concurrently_and_rerun_is_noop(fake_mp):
    fake_mp.set_states(node1="Stopped")
    (fake_mp.dir / "sleep").write_text("1.0")
    state, host = local_state(fake_mp)
    specs = [spec(n, cloud_init=f"#cloud-config\nhostname: {n}\nruncmd: [\"echo it's {n}\"]\n")
             for n in ("control", "node1", "node2", "host1")]
    add_op(state, ops.instances, specs=specs, name="Lab VMs")
    state.set_stage(StateStage.Execute)
    run_ops(state)
    assert state.results[host].success_ops == 1 and state.results[host].error_ops == 0
    assert fake_mp.states() == {n: "Running" for n in ("control", "node1", "node2", "host1")}

    events = {(e[1], e[2]): e[0] for e in fake_mp.calls() if e[1] in ("launch-start", "launch-end")}
    launched = ["control", "node2", "host1"]
    assert sorted(n for kind, n in events if kind == "launch-start") == sorted(launched)
    # every launch started before any other finished: they overlapped
    for a in launched:
        for b in launched:
            assert events[("launch-start", a)] < events[("launch-end", b)]
    # cloud-init went through stdin, byte for byte
    for s in specs:
        if s.name in launched:
            assert (fake_mp.dir / f"cloud-init-{s.name}").read_text() == s.cloud_init
    launch_calls = [e[2] for e in fake_mp.calls() if e[1] == "call" and e[2][0] == "launch"]
    assert all("--cloud-init" in c and c[c.index("--cloud-init") + 1] == "-" for c in launch_calls)
    assert ["start", "--timeout", "900", "node1"] in [e[2] for e in fake_mp.calls() if e[1] == "call"]

    again, host2 = local_state(fake_mp)
    meta = add_op(again, ops.instances, specs=specs, name="Lab VMs")[host2]
    assert not meta.will_change


def test_launch_failure_names_vm_and_message(fake_mp, caplog):
    (fake_mp.dir / "fail-node2").write_text((DATA / "err_bad_image.txt").read_text())
    state, host = local_state(fake_mp)
    add_op(state, ops.instances, specs=SPECS, name="Lab VMs")
    state.set_stage(StateStage.Execute)
    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(PyinfraError, match="No hosts remaining"):
        run_ops(state)  # the only host failed
    assert "launch node2 failed: launch failed: '24.10' is not a supported alias" in caplog.text
    assert "multipass find" in caplog.text
    assert set(fake_mp.states()) == {"control", "node1", "host1"}  # the others still launched


def test_launch_timeout_with_running_vm_is_tolerated(fake_mp, caplog):
    # the VM runs although launch gave up (canonical/multipass#1757)
    (fake_mp.dir / "fail-node1").write_text((DATA / "err_launch_timeout.txt").read_text())
    state, host = local_state(fake_mp)
    add_op(state, ops.instances, specs=[spec("node1")], name="Lab VMs")
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        execute(state)
    assert state.results[host].success_ops == 1
    assert "Multipass timed out waiting for initialisation but node1 is Running; continuing" in caplog.text


def test_a_daemon_down_after_a_launch_timeout_is_not_read_as_a_missing_vm(fake_mp, caplog):
    (fake_mp.dir / "fail-node1").write_text((DATA / "err_launch_timeout.txt").read_text())
    (fake_mp.dir / "down-after-launch").touch()
    state, host = local_state(fake_mp)
    add_op(state, ops.instances, specs=[spec("node1")], name="Lab VMs")
    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(PyinfraError, match="No hosts remaining"):
        execute(state)
    assert "launch node1 timed out, and `multipass list` cannot say whether they run: " in caplog.text
    assert "the Multipass daemon does not answer" in caplog.text
    assert "state now: absent" not in caplog.text


def test_teardown_from_a_vm_host_with_the_daemon_down_fails_with_the_cause(fake_mp, caplog):
    fake_mp.set_states(node1="Running")
    state, host = local_state(fake_mp, names=("@multipass/node1",))  # `--limit node1`: no @local
    (fake_mp.dir / "daemon-down").touch()
    add_op(state, ops.absent, names=["node1"], name="teardown")
    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(PyinfraError, match="No hosts remaining"):
        execute(state)
    assert "cannot tell which of node1 exist: the Multipass daemon does not answer" in caplog.text


def test_list_instances_names_the_cause_instead_of_answering_no_instances(fake_mp, tmp_path):
    fake_mp.set_states(node1="Running")
    assert mp.list_instances(fake_mp.bin)["node1"]["state"] == "Running"
    (fake_mp.dir / "daemon-down").touch()
    with pytest.raises(mp.MultipassUnavailable, match="the Multipass daemon does not answer"):
        mp.list_instances(fake_mp.bin)
    with pytest.raises(mp.MultipassUnavailable, match="multipass not found"):
        mp.list_instances(str(tmp_path / "nope"))


def test_absent_deletes_lab_vms_only(fake_mp):
    fake_mp.set_states(control="Running", node1="Deleted", mine="Running")
    state, host = local_state(fake_mp)
    add_op(state, ops.absent, names=["control", "node1", "node2", "host1"], name="teardown")
    assert fake_mp.commands() == ["list"]
    state.set_stage(StateStage.Execute)
    run_ops(state)
    assert fake_mp.states() == {"mine": "Running"}
    deletes = [e[2] for e in fake_mp.calls() if e[1] == "call" and e[2][0] == "delete"]
    assert sorted(deletes) == [["delete", "--purge", "control"], ["delete", "--purge", "node1"]]


def test_missing_multipass_in_prepare_means_no_instances(tmp_path):
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    host = inventory.get_host("@local")
    from calicolab.facts.multipass import MultipassInstances

    with ctx_state.use(state), ctx_host.use(host):
        assert host.get_fact(MultipassInstances, multipass_bin=str(tmp_path / "nope")) == {}


# --- tasks/vms.py with the lab model stubbed -------------------------------------------------------------


def test_tasks_vms_builds_one_launch_spec_per_vm(monkeypatch):
    vm = lambda name, cpus, mem, disk: types.SimpleNamespace(name=name, cpus=cpus, memory=mem, disk=disk)  # noqa: E731
    lab = types.SimpleNamespace(
        ubuntu_image="24.04",
        vms={"control": vm("control", 2, "2G", "10G"), "node1": vm("node1", 1, "1G", "8G")},
        timeout_cloud_init=900,
        multipass_bin="multipass",
    )
    model = types.ModuleType("calicolab.model")
    model.lab_for_host = lambda host: lab
    render = types.ModuleType("calicolab.render")
    render.render_cloud_init = lambda lab, name: f"#cloud-config\nhostname: {name}\n"
    render.cloud_init_fingerprint = lambda lab, name: f"fingerprint of {name}"
    try:
        import calicolab.model  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "calicolab.model", model)
    try:
        import calicolab.render  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "calicolab.render", render)
    monkeypatch.delitem(sys.modules, "tasks.vms", raising=False)
    import tasks.vms as vms

    monkeypatch.setattr(vms, "render_cloud_init", render.render_cloud_init)
    monkeypatch.setattr(vms, "cloud_init_fingerprint", render.cloud_init_fingerprint)
    specs = vms.vm_specs(lab)
    assert specs[0] == mp.InstanceSpec("control", "24.04", 2, "2G", "10G", "#cloud-config\nhostname: control\n")

    # the order of the phase (launch, barrier, cloud-init) is checked by the deploys in test_lab_*.py


class FailingRun:
    """Just enough of a pyinfra State for the barrier's failure log: op names, ignore flags, failed hosts."""

    def __init__(self, ops, ignored=()):
        self.ops, self.ignored, self.failed_hosts = ops, set(ignored), []

    def get_op_meta(self, op_hash):
        return types.SimpleNamespace(names={self.ops[op_hash]})

    def get_op_data_for_host(self, host, op_hash):
        return types.SimpleNamespace(global_arguments={"_ignore_errors": op_hash in self.ignored})


def test_barrier_summary_names_the_first_failure_as_cause_and_later_ones_as_consequences():
    run = FailingRun({"launch": "Lab VMs", "wait": "cloud-init finished", "fact": "k3s token", "opt": "optional"},
                     ignored={"opt"})
    local, node2, host1, node1 = (types.SimpleNamespace(name=n) for n in ("@local", "node2", "host1", "node1"))
    log = barrier_module.FailureLog(known_failed={"gone"})
    run.failed_hosts.append(types.SimpleNamespace(name="gone"))  # failed to connect: not this run's failure

    log.operation_host_start(run, local, "launch")
    log.error_line("\x1b[1m[@local]\x1b[0m  launch node2 failed: launch failed: The following errors occurred:\nnode2: boom")
    log.error_line("[@local]  Error: executed 0 commands")
    log.operation_host_error(run, local, "launch")
    log.operation_host_start(run, node2, "wait")
    log.error_line("[node2]   cannot wait for cloud-init: instance node2 is not running")
    log.operation_host_error(run, node2, "wait")
    log.operation_host_start(run, node1, "opt")
    log.operation_host_error(run, node1, "opt")  # ignored by the deploy: stops nothing
    # a fact that cannot be loaded fails the host, not the operation
    log.operation_host_start(run, host1, "fact")
    log.error_line("[host1]   exec failed: ssh connection failed")
    run.failed_hosts.append(host1)

    assert log.failed_hosts(run) == ["@local", "node2", "host1"]
    lines = log.summary("── phase 1 ──", log.failed_hosts(run))
    assert lines[0].startswith('Run stopped at "── phase 1 ──": @local, node2, host1 failed')
    assert lines[1] == ("    cause: [@local] Lab VMs: launch node2 failed: launch failed: "
                        "The following errors occurred: node2: boom")
    assert lines[2] == ("    then (likely a consequence): [node2] cloud-init finished: cannot wait for cloud-init: "
                        "instance node2 is not running")
    assert lines[3] == "    then (likely a consequence): [host1] k3s token: exec failed: ssh connection failed"
    assert "re-run" in lines[-1]


def test_barrier_stops_the_run_once_a_host_failed(fake_mp, caplog):
    from pyinfra.operations import server

    fake_mp.set_states(node1="Running", node2="Running")
    state, _ = local_state(fake_mp, names=("@multipass/node1", "@multipass/node2"))
    # the planning runs the barrier too: nothing has failed yet, the plan is never cut short
    add_op(state, server.shell, commands=['test "$VM" != node2'], name="fails on node2")
    barrier_module.watch_failures(state)
    add_op(state, barrier_module._phase_boundary, boundary="── phase 2 ──", name="── phase 2 ──")
    add_op(state, server.shell, commands=[f"touch {fake_mp.dir}/after-$VM"], name="after the barrier")
    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(PyinfraError, match="No hosts remaining"):
        execute(state)
    assert not list(fake_mp.dir.glob("after-*")), "nothing after the barrier ran, on no host"
    assert 'Run stopped at "── phase 2 ──": node2 failed' in caplog.text
    assert "cause: [node2] fails on node2" in caplog.text


# --- a run limited to VMs without the workstation ------------------------------------------------


def test_a_limit_without_the_workstation_names_the_vms_that_nothing_would_start(lab):
    from tasks.vms import require_workstation_for, vms_left_down

    inventory = Inventory(([("@local", {}), ("control", {}), ("node2", {}), ("host1", {})], {}))
    state = State(inventory, Config())
    hosts = {h.name: h for h in inventory}
    hosts["control"].connector_data["multipass_state"] = mp.RUNNING
    hosts["node2"].connector_data["multipass_state"] = mp.STOPPED

    state.limit_hosts = [hosts["node2"], hosts["control"], hosts["host1"]]  # --limit without @local
    assert vms_left_down(lab, state) == ["node2 is Stopped", "host1 is not created yet"]
    with pytest.raises(PyinfraError, match=r"^node2 is Stopped; host1 is not created yet: the run leaves out "
                                           r"the workstation \(@local\).*--limit @local"):
        require_workstation_for(vms_left_down(lab, state))

    state.limit_hosts = [hosts["node2"], hosts["@local"]]  # the workstation starts them
    assert vms_left_down(lab, state) == []
    state.limit_hosts = None  # no --limit
    assert vms_left_down(lab, state) == []
    require_workstation_for([])
