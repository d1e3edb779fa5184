"""The @multipass connector, with Multipass replaced by a recorder or by a small fake script."""

from __future__ import annotations

import io
import json
import logging
import shlex
from pathlib import Path

import pytest

from pyinfra.api import Config, Inventory, State, StringCommand
from pyinfra.api.exceptions import ConnectError, InventoryError

from calicolab import multipass as mp
from calicolab.connectors.multipass import MultipassConnector, VmNotRunning

DATA = Path(__file__).parent / "data" / "multipass"


class Recorder:
    """Stands in for ``calicolab.multipass.run_process``: answers `list`, records everything."""

    def __init__(self, states=None, exec_result=(0, b"", b"")):
        self.states = dict(states or {})
        self.exec_result = exec_result
        self.calls: list[tuple[list[str], bytes | None, float | None]] = []
        self.list_result = None

    def list_json(self) -> bytes:
        return json.dumps(
            {"list": [{"name": n, "state": s, "ipv4": [], "release": "Ubuntu 24.04 LTS"} for n, s in self.states.items()]}
        ).encode()

    def __call__(self, argv, stdin=None, timeout=None):
        self.calls.append((list(argv), stdin, timeout))
        if argv[1:] == ["list", "--format", "json"]:
            if self.list_result is not None:
                rc, out, err = self.list_result
                return mp.ProcessResult(list(argv), rc, out, err)
            return mp.ProcessResult(list(argv), 0, self.list_json(), b"")
        if argv[1] == "exec":
            result = self.exec_result(argv, stdin) if callable(self.exec_result) else self.exec_result
            return mp.ProcessResult(list(argv), *result)
        raise AssertionError(f"unexpected call {argv}")

    @property
    def execs(self):
        return [call for call in self.calls if call[0][1] == "exec"]

    @property
    def lists(self):
        return [call for call in self.calls if call[0][1] == "list"]


def make_host(data=None, name="control"):
    inventory = Inventory(([f"@multipass/{name}"], dict(data or {})))
    state = State(inventory, Config())
    return state, inventory.get_host(name)


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder({"control": "Running"})
    monkeypatch.setattr(mp, "run_process", rec)
    return rec


@pytest.fixture
def running(recorder):
    state, host = make_host()
    host.connect(raise_exceptions=True)
    return state, host, recorder


def remote(call) -> str:
    """The command line the VM's outer `sh -c` receives."""
    argv = call[0]
    assert argv[:6] == ["multipass", "exec", "control", "--", "sh", "-c"]
    assert len(argv) == 7
    return argv[6]


# --- inventory -----------------------------------------------------------------------------------


def test_make_names_data():
    assert list(MultipassConnector.make_names_data("control")) == [
        ("control", {"multipass_instance": "control"}, ["@multipass"])
    ]
    with pytest.raises(InventoryError):
        list(MultipassConnector.make_names_data(None))
    with pytest.raises(InventoryError, match="invalid Multipass instance name"):
        list(MultipassConnector.make_names_data("-bad"))


def test_entry_point_and_bare_host_name(recorder):
    state, host = make_host()
    assert host.name == "control"
    assert isinstance(host.connector, MultipassConnector)
    assert "@multipass" in [group for group in host.groups]
    assert host.data.multipass_instance == "control"


# --- connect -------------------------------------------------------------------------------------


def test_connect_running_records_state(running):
    state, host, recorder = running
    assert host.connected
    assert host.connector_data["multipass_state"] == "Running"
    assert recorder.calls[0][0] == ["multipass", "list", "--format", "json"]


@pytest.mark.parametrize(
    "states, text",
    [
        ({}, "control does not exist yet: operations will be planned as if it were new"),
        ({"control": "Stopped"}, "control is Stopped: operations will be planned as if it were new"),
        ({"control": "Suspended"}, "control is Suspended"),
    ],
)
def test_connect_absent_or_stopped_warns_but_connects(monkeypatch, caplog, states, text):
    rec = Recorder(states)
    monkeypatch.setattr(mp, "run_process", rec)
    state, host = make_host()
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        host.connect(raise_exceptions=True)
    assert host.connected
    assert text in caplog.text
    assert [call[0][1] for call in rec.calls] == ["list"]  # read-only


def test_connect_not_installed(tmp_path):
    state, host = make_host({"multipass_bin": str(tmp_path / "no-such-multipass")})
    with pytest.raises(ConnectError) as info:
        host.connector.connect()
    message = info.value.args[0]
    assert message.startswith("multipass not found: install it with ")
    assert "or set multipass_bin" in message


@pytest.mark.parametrize("rc", [0, 1, 2, 3])
def test_connect_daemon_down_any_exit_code(monkeypatch, rc):
    rec = Recorder()
    rec.list_result = (rc, b"", (DATA / "err_daemon_down.txt").read_bytes())
    monkeypatch.setattr(mp, "run_process", rec)
    state, host = make_host()
    with pytest.raises(ConnectError) as info:
        host.connector.connect()
    assert "the Multipass daemon does not answer: restart it with" in info.value.args[0]
    assert "restart" in info.value.args[0]
    assert "cannot connect to the multipass socket" in info.value.args[0]


def connect_run(monkeypatch, rec, names=("control", "node1", "node2", "host1")):
    """Connect several hosts together, as pyinfra does, and return the State."""
    from pyinfra.api.connect import connect_all
    from pyinfra.api.state import StateStage

    monkeypatch.setattr(mp, "run_process", rec)
    state = State(Inventory(([f"@multipass/{n}" for n in names], {})), Config())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    return state


def test_hosts_connecting_together_share_one_list_and_later_reads_are_fresh(monkeypatch):
    rec = Recorder({"control": "Running", "node1": "Stopped"})
    state = connect_run(monkeypatch, rec)
    assert len(rec.lists) == 1
    assert {h.name: h.connector_data["multipass_state"] for h in state.inventory} == {
        "control": "Running", "node1": "Stopped", "node2": None, "host1": None}
    state.is_executing = True
    rec.states["node1"] = "Running"  # started by an earlier operation
    ok, _ = state.inventory.get_host("node1").run_shell_command(StringCommand("true"))
    assert ok and len(rec.lists) == 2


def test_a_daemon_down_fails_every_connecting_host_with_the_cause(monkeypatch, caplog):
    rec = Recorder()
    rec.list_result = (2, b"", (DATA / "err_daemon_down.txt").read_bytes())
    from pyinfra.api.exceptions import PyinfraError

    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(PyinfraError, match="No hosts remaining"):
        connect_run(monkeypatch, rec)
    assert len(rec.lists) == 1
    failed = [r.getMessage() for r in caplog.records if "the Multipass daemon does not answer" in r.getMessage()]
    assert len(failed) == 4, "each host says why"


def test_connect_other_failure_and_garbage(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(mp, "run_process", rec)
    state, host = make_host()
    rec.list_result = (2, b"", b"list failed: something odd")
    with pytest.raises(ConnectError, match="something odd"):
        host.connector.connect()
    rec.list_result = (0, b"Name State IPv4 Image", b"")
    with pytest.raises(ConnectError, match="not JSON"):
        host.connector.connect()


# --- run_shell_command ---------------------------------------------------------------------------


def test_exec_argv_plain(running):
    state, host, recorder = running
    recorder.exec_result = (0, b"hello\nworld\n", b"warn\n")
    ok, output = host.run_shell_command(StringCommand("echo", "hello"))
    assert ok
    assert output.stdout_lines == ["hello", "world"]
    assert output.stderr_lines == ["warn"]
    call = recorder.execs[-1]
    assert remote(call) == "sh -c 'echo hello'"
    assert call[1] is None
    assert call[2] == 600  # multipass_exec_timeout default when _timeout is None


def test_exec_sudo_and_sudo_user(running):
    state, host, recorder = running
    host.run_shell_command(StringCommand("id"), _sudo=True)
    assert remote(recorder.execs[-1]) == "sudo -H -n sh -c id"
    host.run_shell_command(StringCommand("id"), _sudo=True, _sudo_user="k3s")
    assert remote(recorder.execs[-1]) == "sudo -H -n -u k3s sh -c id"


def test_exec_env_and_chdir(running):
    state, host, recorder = running
    host.run_shell_command(StringCommand("pwd"), _env={"A": "it's"}, _chdir="/var/lib")
    line = remote(recorder.execs[-1])
    assert line.startswith("sh -c ")
    inner = shlex.split(line)[2]
    assert inner.startswith("cd /var/lib && export ")
    assert shlex.split(inner)[4] == "A=it's"


def test_exec_timeout_stdin_success_codes(running):
    state, host, recorder = running
    recorder.exec_result = (2, b"", b"")
    ok, _ = host.run_shell_command(StringCommand("grep", "x"), _timeout=7, _stdin="a\nb", _get_pty=True)
    assert not ok
    argv, stdin, timeout = recorder.execs[-1]
    assert timeout == 7.0
    assert stdin == b"a\nb\n"
    ok, _ = host.run_shell_command(StringCommand("grep", "x"), _success_exit_codes=[0, 2])
    assert ok


def test_exec_timeout_from_host_data(monkeypatch):
    rec = Recorder({"control": "Running"})
    monkeypatch.setattr(mp, "run_process", rec)
    state, host = make_host({"multipass_exec_timeout": 42, "multipass_bin": "/snap/bin/multipass"})
    host.connect(raise_exceptions=True)
    host.run_shell_command(StringCommand("true"))
    argv, _, timeout = rec.execs[-1]
    assert timeout == 42
    assert argv[:2] == ["/snap/bin/multipass", "exec"]


@pytest.mark.parametrize("states", [{}, {"control": "Stopped"}, {"control": "Deleted"}])
def test_phantom_mode_never_execs_in_prepare(monkeypatch, states):
    rec = Recorder(states)
    monkeypatch.setattr(mp, "run_process", rec)
    state, host = make_host()
    host.connect(raise_exceptions=True)
    assert not state.is_executing
    ok, output = host.run_shell_command(StringCommand("cloud-init", "status"), _sudo=True)
    assert ok and output.combined_lines == []
    assert host.put_file(io.BytesIO(b"x"), "/etc/x", _sudo=True)
    assert host.get_file("/etc/x", io.BytesIO())
    assert rec.execs == []
    assert len(rec.lists) == 1


def executing_host(monkeypatch, states):
    """A connected host whose deploy is executing, Multipass replaced by a recorder."""
    rec = Recorder(states)
    monkeypatch.setattr(mp, "run_process", rec)
    state, host = make_host()
    host.connect(raise_exceptions=True)
    state.is_executing = True
    return rec, host


def test_execute_on_stopped_vm_fails_cleanly(monkeypatch):
    rec, host = executing_host(monkeypatch, {"control": "Stopped"})
    ok, output = host.run_shell_command(StringCommand("true"))
    assert not ok
    assert output.stderr == "instance control is not running (state: Stopped)"  # pyinfra prints it
    assert isinstance(output, VmNotRunning) and output.state == "Stopped"  # what operations look at
    assert rec.execs == []  # never relies on exec's auto-start
    assert len(rec.lists) == 2  # re-checked at execution time
    assert host.put_file(io.BytesIO(b"x"), "/tmp/x") is False


def test_execute_when_the_daemon_stopped_answering_says_so_and_does_not_claim_the_vm_is_gone(monkeypatch):
    rec, host = executing_host(monkeypatch, {"control": "Stopped"})
    rec.list_result = (3, b"", b"list failed: cannot connect to the multipass socket")
    ok, output = host.run_shell_command(StringCommand("true"))
    assert not ok and isinstance(output, VmNotRunning) and output.state is None
    assert "the Multipass daemon does not answer" in output.stderr
    assert "does not exist" not in output.stderr
    assert rec.execs == []


def test_execute_after_launch_runs_normally(monkeypatch):
    rec = Recorder({})
    monkeypatch.setattr(mp, "run_process", rec)
    state, host = make_host()
    host.connect(raise_exceptions=True)
    state.is_executing = True
    rec.states["control"] = "Running"  # an earlier @local operation launched it
    ok, _ = host.run_shell_command(StringCommand("true"))
    assert ok
    assert len(rec.execs) == 1
    host.run_shell_command(StringCommand("true"))
    assert len(rec.lists) == 2  # cached once running


def test_execute_waits_for_starting_vm(monkeypatch):
    rec = Recorder({"control": "Starting"})
    seen = []

    def run(argv, stdin=None, timeout=None):
        if argv[1] == "list":
            seen.append(1)
            if len(seen) >= 3:
                rec.states["control"] = "Running"
        return rec(argv, stdin, timeout)

    monkeypatch.setattr(mp, "run_process", run)
    state, host = make_host()
    host.connect(raise_exceptions=True)
    state.is_executing = True
    ok, _ = host.run_shell_command(StringCommand("true"))
    assert ok and len(rec.execs) == 1


# --- put_file / get_file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_src, expected",
    [
        (lambda tmp: str(tmp), b"\x00binary\xffdata"),
        (lambda tmp: io.BytesIO(b"\x00binary\xffdata"), b"\x00binary\xffdata"),
        (lambda tmp: io.StringIO("text without newline"), b"text without newline"),
    ],
)
def test_put_file_sources_and_sudo_target(running, tmp_path, make_src, expected):
    state, host, recorder = running
    src_path = tmp_path / "src.bin"
    src_path.write_bytes(b"\x00binary\xffdata")
    src = make_src(src_path)
    assert host.put_file(src, "/etc/rancher/k3s/config.yaml", _sudo=True)
    # one `multipass exec`: the bytes on the stdin of cat (private while in /tmp), byte for byte, then
    # cp to the target, all with the operation's sudo, and the temp file removed
    (upload,) = recorder.execs
    assert upload[1] == expected
    line = remote(upload)
    assert line.startswith("sudo -H -n sh -c ")
    inner = shlex.split(line)[5]
    assert inner.startswith("umask 077 && cat > /tmp/calicolab-upload-")
    temp = shlex.split(inner)[5]
    assert temp.endswith("-config.yaml")
    assert inner.endswith(f"&& cp {temp} /etc/rancher/k3s/config.yaml ; rc=$? ; rm -f {temp} 2>/dev/null ; exit $rc")


def test_put_file_failures(running):
    state, host, recorder = running
    recorder.exec_result = (1, b"", b"cat: /tmp/x: No space left on device")
    assert host.put_file(io.BytesIO(b"x"), "/etc/x") is False
    assert len(recorder.execs) == 1


def test_put_file_as_another_user_writes_and_removes_its_temp_file_as_that_user(running):
    state, host, recorder = running
    host.put_file(io.BytesIO(b"x"), "/var/lib/app/x", _sudo=True, _sudo_user="app")
    (upload,) = recorder.execs
    line = remote(upload)
    assert line.startswith("sudo -H -n -u app sh -c ")
    assert "rm -f /tmp/calicolab-upload-" in shlex.split(line)[7]


def test_get_file_uses_sudo_cat(running, tmp_path):
    state, host, recorder = running
    recorder.exec_result = (0, b"apiVersion: v1\n\x00\xff", b"")
    target = io.BytesIO()
    assert host.get_file("/etc/rancher/k3s/k3s.yaml", target)
    assert remote(recorder.execs[-1]) == "sudo -H -n sh -c 'cat /etc/rancher/k3s/k3s.yaml'"
    assert target.getvalue() == b"apiVersion: v1\n\x00\xff"
    path = tmp_path / "k3s.yaml"
    assert host.get_file("/etc/rancher/k3s/k3s.yaml", str(path))
    assert path.read_bytes() == b"apiVersion: v1\n\x00\xff"
    recorder.exec_result = (0, b"text\n", b"")
    text = io.StringIO()
    assert host.get_file("/x", text)
    assert text.getvalue() == "text\n"
    recorder.exec_result = (1, b"", b"cat: /x: No such file or directory")
    assert host.get_file("/x", io.BytesIO()) is False


# --- against a fake `multipass` script (real processes, real shells) --------------------------------


@pytest.fixture
def fake_multipass(tmp_path):
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"list": [{"name": "control", "state": "Running", "ipv4": [], "release": ""}]}))
    # a `sudo` stand-in inside the "VM" (this machine may have none): drop options, run the rest
    sudo = tmp_path / "sudo"
    sudo.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do case "$1" in -u) shift 2 ;; -*) shift ;; *) break ;; esac; done\n'
        'exec "$@"\n'
    )
    sudo.chmod(0o755)
    script = tmp_path / "multipass"
    script.write_text(
        "#!/bin/sh\n"
        f'PATH="{tmp_path}:$PATH"; export PATH\n'
        f'echo "$$" > {tmp_path}/last.pid\n'
        f'if [ "$1" = list ]; then cat {listing}; exit 0; fi\n'
        'if [ "$1" = exec ]; then shift 3; exec "$@"; fi\n'
        "exit 9\n"
    )
    script.chmod(0o755)
    return script


def real_host(fake_multipass, **data):
    state, host = make_host({"multipass_bin": str(fake_multipass), **data})
    host.connect(raise_exceptions=True)
    return state, host


def test_real_shell_layers_keep_env_chdir_and_specials(fake_multipass, tmp_path):
    state, host = real_host(fake_multipass)
    ok, output = host.run_shell_command(
        StringCommand("echo", "\"$A\"", "`pwd`", "$((1+1))"),
        _env={"A": "it's $HOME"},
        _chdir=str(tmp_path),
    )
    assert ok, output.stderr
    assert output.stdout == f"it's $HOME {tmp_path} 2"


def test_real_stdin_and_exit_codes(fake_multipass):
    state, host = real_host(fake_multipass)
    ok, output = host.run_shell_command(StringCommand("cat"), _stdin=["line 1", "line 2"])
    assert ok and output.stdout_lines == ["line 1", "line 2"]
    ok, _ = host.run_shell_command(StringCommand("exit 3"))
    assert not ok
    ok, _ = host.run_shell_command(StringCommand("exit 3"), _success_exit_codes=[3])
    assert ok


def ends(pid: int) -> bool:
    """Whether the process ends (gone, or killed and waiting to be reaped) within a generous while."""
    from calicolab.polling import Check, poll

    def probe(remaining):
        stat = Path(f"/proc/{pid}/stat")
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return Check(True, "gone")
        return Check(state in ("Z", "X"), f"state {state}")

    return poll(f"process {pid} to end", 10, probe).done  # well before its sleep would end it


def test_real_timeout_kills_the_process(fake_multipass, tmp_path):
    state, host = real_host(fake_multipass)
    with pytest.raises(TimeoutError):  # "sleep 120" would have ended without it
        host.run_shell_command(StringCommand("sleep 120"), _timeout=1)
    assert ends(int((tmp_path / "last.pid").read_text()))


def test_real_put_and_get_file_binary_safe(fake_multipass, tmp_path):
    state, host = real_host(fake_multipass)
    payload = bytes(range(256)) * 64  # 16 KiB, every byte value, no trailing newline
    target = tmp_path / "out.bin"
    assert host.put_file(io.BytesIO(payload), str(target), _sudo=True)
    assert target.read_bytes() == payload
    assert not list(Path("/tmp").glob("calicolab-upload-*-out.bin"))  # temp file removed
    back = io.BytesIO()
    assert host.get_file(str(target), back)
    assert back.getvalue() == payload
    assert host.get_file(str(tmp_path / "missing"), io.BytesIO()) is False


def test_no_print_to_stdout(running, capsys):
    state, host, recorder = running
    recorder.exec_result = (0, b"out\n", b"err\n")
    host.run_shell_command(StringCommand("true"), print_output=True, print_input=True)
    assert capsys.readouterr().out == ""


def test_killed_greenlet_does_not_leave_the_child(tmp_path):
    import gevent

    pidfile = tmp_path / "pid"
    script = tmp_path / "slow"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 120\n")
    script.chmod(0o755)
    greenlet = gevent.spawn(mp.run_process, [str(script)], None, 60)
    for _ in range(100):
        gevent.sleep(0.05)
        if pidfile.exists() and pidfile.read_text().strip():
            break
    greenlet.kill()
    assert ends(int(pidfile.read_text()))
