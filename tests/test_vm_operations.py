"""Multipass operations: decisions from fact values, and real runs against a fake `multipass` script."""

from __future__ import annotations

import json
import logging
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


def test_all_missing_launches_all_in_one_command():
    host = FakeHost(instances_fact(), data={"multipass_bin": "/snap/bin/multipass"})
    commands = run_body(ops.instances, host, specs=SPECS, launch_timeout=600)
    assert len(commands) == 1
    (command,) = commands
    assert isinstance(command, FunctionCommand)
    assert command.function is ops._launch_all
    launched, multipass_bin, timeout = command.args
    assert [s.name for s in launched] == ["control", "node1", "node2", "host1"]
    assert (multipass_bin, timeout) == ("/snap/bin/multipass", 600)
    assert host.fact_calls == [("MultipassInstances", {"multipass_bin": "/snap/bin/multipass"})]
    assert any("control will be launched" in line for line in host.logs)


def test_dict_specs_and_diff_shows_cloud_init(caplog):
    host = FakeHost(instances_fact(control="Running", node1="Running", node2="Running"))
    specs = [dict(name=s.name, image=s.image, cpus=s.cpus, memory=s.memory, disk=s.disk, cloud_init=s.cloud_init)
             for s in SPECS]
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        commands = run_body(ops.instances, host, FakeState(diff=True), specs=specs)
    assert [s.name for s in commands[0].args[0]] == ["host1"]
    assert "host1 cloud-init + hostname: host1" in caplog.text


def test_running_is_noop():
    host = FakeHost(instances_fact(control="Running", node1="Running", node2="Running", host1="Running",
                                   other="Stopped"))
    assert run_body(ops.instances, host, specs=SPECS) == []
    assert host.noops == ["Multipass instances control, node1, node2, host1 are running"]


@pytest.mark.parametrize("stopped_state", ["Stopped", "Suspended", "Suspending", "Starting"])
def test_stopped_are_started_missing_launched(stopped_state):
    host = FakeHost(instances_fact(control="Running", node1=stopped_state, node2="Stopped"))
    commands = run_body(ops.instances, host, specs=SPECS)
    assert [c.function for c in commands] == [ops._launch_all, ops._run_each, ops._wait_answering]
    assert [s.name for s in commands[0].args[0]] == ["host1"]
    assert commands[1].args[:2] == ("start", ["node1", "node2"])
    assert commands[2].args[0] == ["node1", "node2"]


def test_started_vms_are_waited_for_until_they_answer(monkeypatch):
    monkeypatch.setattr(ops, "ANSWER_POLL", 0)
    asleep = mp.ProcessResult([], 2, b"", b"exec failed: ssh connection failed: 'Timeout connecting to 10.0.0.3'")
    awake = mp.ProcessResult([], 0, b"", b"")
    answers = [{"node1": awake, "node2": asleep}, {"node2": awake}]
    asked = []

    def run_parallel(jobs, timeout=None):
        asked.append({name: argv[-4:] for name, (argv, _) in jobs.items()})
        return answers.pop(0)

    monkeypatch.setattr(ops.mp, "run_parallel", run_parallel)
    host = FakeHost()
    assert ops._wait_answering(None, host, ["node1", "node2"], "multipass", timeout=60) is True
    assert asked == [{"node1": ["--", "sh", "-c", "true"], "node2": ["--", "sh", "-c", "true"]},
                     {"node2": ["--", "sh", "-c", "true"]}]
    assert "waiting for node2 to answer (exec failed: ssh connection failed" in host.logs[0]

    monkeypatch.setattr(ops.mp, "run_parallel", lambda jobs, timeout=None: {"node2": asleep})
    never = FakeHost()
    assert ops._wait_answering(None, never, ["node2"], "multipass", timeout=0) is False
    assert "node2 was started but does not answer `multipass exec` after 0s" in never.logs[-1]
    assert "Timeout connecting to 10.0.0.3" in never.logs[-1]


def test_delayed_shutdown_is_cancelled():
    host = FakeHost(instances_fact(control="Delayed Shutdown", node1="Running", node2="Running", host1="Running"))
    commands = run_body(ops.instances, host, specs=SPECS)
    assert commands[0].args[:2] == ("cancel-stop", ["control"])


@pytest.mark.parametrize(
    "bad_state, text",
    [
        ("Deleted", "multipass recover node2"),
        ("Unknown", "restart the Multipass daemon"),
        ("Unavailable", "restart the Multipass daemon"),
    ],
)
def test_deleted_and_unknown_fail_cleanly(bad_state, text):
    host = FakeHost(instances_fact(control="Stopped", node2=bad_state))
    commands = run_body(ops.instances, host, specs=SPECS)
    # the others are still launched/started; a last FunctionCommand fails with the explanation
    assert [c.function for c in commands] == [ops._launch_all, ops._run_each, ops._wait_answering, ops._fail]
    assert [s.name for s in commands[0].args[0]] == ["node1", "host1"]
    assert commands[1].args[:2] == ("start", ["control"])
    (messages,) = commands[-1].args
    assert any(text in m and "node2" in m for m in messages)
    assert any(text in line for line in host.logs)  # also shown in the plan
    fake = FakeHost()
    assert ops._fail(None, fake, messages) is False
    assert fake.logs == messages


def test_messages_printed_once_per_run():
    host = FakeHost(instances_fact())
    run_body(ops.instances, host, FakeState(executing=True, check=True), specs=SPECS)
    assert host.logs == []  # already shown in Prepare
    run_body(ops.instances, host, FakeState(executing=True, check=False), specs=SPECS)
    assert host.logs  # -y: Prepare skipped the body


def test_instance_single_and_stop_and_delete():
    host = FakeHost(instances_fact(control="Running"))
    commands = run_body(ops.instance, host, instance_name="control", image="24.04", cpus=2, memory="2G",
                        disk="10G", cloud_init="#cloud-config\n", running=False)
    assert commands[0].args[:2] == ("stop", ["control"])
    commands = run_body(ops.instance, host, instance_name="control", image="24.04", cpus=2, memory="2G",
                        disk="10G", cloud_init="#cloud-config\n", present=False)
    assert commands[0].args[:2] == ("delete", ["control"])
    missing = FakeHost(instances_fact())
    assert run_body(ops.instance, missing, instance_name="control", image="24.04", cpus=2, memory="2G",
                    disk="10G", cloud_init="", present=False) == []


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError):
        spec("-rm")
    with pytest.raises(ValueError, match="memory"):
        mp.InstanceSpec("control", "24.04", 1, "lots", "5G", "")
    with pytest.raises(ValueError, match="duplicate"):
        run_body(ops.instances, FakeHost(instances_fact()), specs=[SPECS[0], SPECS[0]])


def test_absent_deletes_only_named_existing_instances():
    host = FakeHost(instances_fact(control="Running", node1="Deleted", mine="Running"))
    commands = run_body(ops.absent, host, names=["control", "node1", "node2", "host1"])
    assert len(commands) == 1
    assert commands[0].args[:2] == ("delete", ["control", "node1"])
    none_left = FakeHost(instances_fact(mine="Running"))
    assert run_body(ops.absent, none_left, names=["control"]) == []
    assert none_left.noops


def test_absent_from_a_vm_host_asks_the_workstation():
    local = FakeHost(instances_fact(node1="Running"))
    vm = FakeHost({}, name="node1")
    fake_state = FakeState()
    fake_state.inventory = types.SimpleNamespace(get_host=lambda name, default=None: local)
    commands = run_body(ops.absent, vm, fake_state, names=["node1"])
    assert commands[0].args[:2] == ("delete", ["node1"])
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


def shell_output(name, ok=True):
    lines = (DATA / name).read_text().splitlines()
    return ok, CommandOutput([OutputLine("stdout", line) for line in lines])


def test_cloud_init_done_decisions():
    done = FakeHost({"CloudInitStatus": "done"}, name="node1")
    assert run_body(ops.cloud_init_done, done, timeout=10) == []
    assert done.noops == ["cloud-init is done"]
    for status in ("running", None, "error"):
        host = FakeHost({"CloudInitStatus": status}, name="node1")
        (command,) = run_body(ops.cloud_init_done, host, timeout=10)
        assert command.function is ops._wait_cloud_init and command.args == (10,)


def test_wait_cloud_init_polls_until_done(monkeypatch):
    monkeypatch.setattr(ops, "CLOUD_INIT_POLL", 0)
    host = FakeHost(name="node1", shell=[
        (False, CommandOutput([OutputLine("stderr", "exec failed: ssh connection closed")])),
        TimeoutError("exec hung"),
        shell_output("cloud_init_status_long_running.txt"),
        shell_output("cloud_init_status_long_done.txt"),
    ])
    assert ops._wait_cloud_init(None, host, timeout=60) is True
    assert host.shell == []


def test_wait_cloud_init_fails_fast_when_vm_is_not_running(monkeypatch):
    monkeypatch.setattr(ops, "CLOUD_INIT_POLL", 0)
    host = FakeHost(name="node1", shell=[
        (False, CommandOutput([OutputLine("stderr", "instance node1 is not running (state: Deleted)")])),
    ])
    assert ops._wait_cloud_init(None, host, timeout=900) is False
    assert "cannot wait for cloud-init: instance node1 is not running (state: Deleted)" in host.logs[-1]


def test_wait_cloud_init_error_shows_long_status(monkeypatch):
    monkeypatch.setattr(ops, "CLOUD_INIT_POLL", 0)
    host = FakeHost(name="node1", shell=[shell_output("cloud_init_status_long_error.txt")])
    assert ops._wait_cloud_init(None, host, timeout=60) is False
    (message,) = host.logs
    assert "cloud-init failed in node1 (status: error)" in message
    assert "Runparts: 1 failures" in message


def test_wait_cloud_init_times_out_naming_vm_and_status(monkeypatch):
    monkeypatch.setattr(ops, "CLOUD_INIT_POLL", 0)
    host = FakeHost(name="host1", shell=[shell_output("cloud_init_status_long_running.txt")] * 50)
    assert ops._wait_cloud_init(None, host, timeout=0) is False
    assert "cloud-init in host1 not done after 0s (last status: running)" in host.logs[-1]


def test_user_data_drift_is_judged_by_the_fingerprint_and_warns_never_recreates():
    wanted = "ab" * 32
    same = FakeHost({"UserDataFingerprint": wanted}, name="node1")
    assert run_body(ops.user_data_current, same, fingerprint=wanted) == []
    assert same.logs == [] and same.noops == ["user-data unchanged"]

    drifted = FakeHost({"UserDataFingerprint": "cd" * 32}, name="node1")
    assert run_body(ops.user_data_current, drifted, fingerprint=wanted) == []
    (warning,) = drifted.logs
    assert "node1 was created from a different cloud-init user-data" in warning
    assert "pyinfra inventory.py teardown.py --limit node1" in warning
    assert "multipass delete --purge node1" in warning

    older = FakeHost({"UserDataFingerprint": FINGERPRINT_MISSING}, name="node1")
    assert run_body(ops.user_data_current, older, fingerprint=wanted) == []
    (note,) = older.logs
    assert "node1 has no calicolab fingerprint (/etc/calicolab/user-data.sha256)" in note
    assert "teardown.py --limit node1" in note and "different cloud-init" not in note

    phantom = FakeHost({"UserDataFingerprint": None}, name="node1")
    assert run_body(ops.user_data_current, phantom, fingerprint=wanted) == []
    assert phantom.logs == []


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
        sys.stderr.write(open(path("fail-" + name)).read())
        log("launch-end", name)
        sys.exit(2)
    with_state(lambda s: s.__setitem__(name, "Running"))
    log("launch-end", name)
    print("Launched: " + name)
elif args[0] == "start":
    with_state(lambda s: s.update({{n: "Running" for n in names}}))
elif args[0] == "delete":
    with_state(lambda s: [s.pop(n, None) for n in names])
elif args[0] == "exec":
    pass  # every VM answers
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


def local_state(fake_mp):
    inventory = Inventory((["@local"], {"multipass_bin": fake_mp.bin}))
    state = State(inventory, Config())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    return state, inventory.get_host("@local")


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
    (fake_mp.dir / "fail-node1").write_text((DATA / "err_launch_timeout.txt").read_text())
    fake_mp.set_states(node1="Running")  # the VM exists although launch gave up (multipass#1757)
    state, host = local_state(fake_mp)
    with ctx_state.use(state), ctx_host.use(host):
        ok = ops._launch_all(state, host, [spec("node1")], fake_mp.bin, 60)
    assert ok


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


def test_tasks_vms_builds_specs_and_calls_ops(monkeypatch):
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

    calls = []
    monkeypatch.setattr(vms.multipass, "instances", lambda **kw: calls.append(("instances", kw)))
    monkeypatch.setattr(vms.multipass, "cloud_init_done", lambda **kw: calls.append(("cloud_init_done", kw)))
    monkeypatch.setattr(vms.multipass, "user_data_current", lambda **kw: calls.append(("user_data_current", kw)))
    monkeypatch.setattr(vms, "barrier", lambda **kw: calls.append(("barrier", kw)))

    with ctx_host.use(types.SimpleNamespace(name="@local")):
        vms.vms_running(lab)
    assert [c[0] for c in calls] == ["instances", "barrier"]
    assert [s.name for s in calls[0][1]["specs"]] == ["control", "node1"]

    calls.clear()
    with ctx_host.use(types.SimpleNamespace(name="node1")):
        vms.vms_running(lab)
    assert [c[0] for c in calls] == ["barrier", "cloud_init_done", "user_data_current"]
    assert calls[0][1] == {"name": "── phase: VMs running ──"}
    assert calls[2][1]["fingerprint"] == "fingerprint of node1"


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


def test_barrier_stops_the_run_once_a_host_failed(monkeypatch):
    host = FakeHost(name="node1")
    monkeypatch.setattr(barrier_module, "failed_hosts", lambda: ["node2"])
    executing = FakeState(executing=True)
    (command,) = run_body(barrier_module._phase_boundary, host, executing, boundary="── phase 2 ──")
    assert command.function is barrier_module._stop_run and command.args == ("── phase 2 ──",)
    assert host.noops == []
    # while planning nothing has failed yet: the plan is never cut short
    assert run_body(barrier_module._phase_boundary, host, FakeState(), boundary="── phase 2 ──") == []


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
