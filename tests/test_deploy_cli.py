"""The real ``pyinfra`` command line as a student runs it, stdin closed, on a workstation that is not ready.

Every path ends with one message, a non-zero exit code, no traceback and no prompt, and nothing
created: no state folder, and no Multipass command beyond ``version`` (and ``list`` where noted).
The ``multipass`` here is a small script speaking the real client's ``version`` and ``list`` JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))

# `multipass version --format json` leaves out "multipassd" when the daemon does not answer (and
# still exits 0); `list` prints an empty lab. Anything else is refused so a test sees it.
FAKE_MULTIPASS = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$1" in
version)
    if [ -n "$FAKE_DAEMON_DOWN" ]; then echo '{"multipass": "1.16.3"}'
    else printf '{"multipass": "1.16.3", "multipassd": "%s"}\\n' "${FAKE_DAEMON_VERSION:-1.16.3}"; fi ;;
list) echo '{"list": []}' ;;
*) echo "this test allows only version and list" >&2; exit 2 ;;
esac
"""

NO_PROMPT = ("Press enter", "continue?", "Traceback", "EOFError")


@pytest.fixture
def workstation(tmp_path):
    """A PATH with the fake multipass, a state folder path that does not exist yet, and the calls log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "multipass").write_text(FAKE_MULTIPASS)
    (bin_dir / "multipass").chmod(0o755)

    class Workstation:
        bin = bin_dir
        state = tmp_path / "state"

        def calls(self) -> list[str]:
            log = bin_dir / "calls"
            return log.read_text().splitlines() if log.exists() else []

    return Workstation()


def run(args, bin_dir: Path, state: Path | None = None, deploy="deploy.py", cwd=PROJECT, env=None, inventory="inventory.py"):
    environment = dict(os.environ, PATH=f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", **(env or {}))
    state_args = [f"--data=state_dir={state}"] if state is not None else []
    result = subprocess.run([PYINFRA, inventory, deploy, *args, *state_args], cwd=cwd, env=environment,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    result.output = result.stdout + result.stderr
    return result


def assert_clean_stop(result, message: str, code: int = 1):
    assert result.returncode == code, result.output[-3000:]
    assert f"calicolab: {message}" in result.output, result.output[-3000:]
    for text in NO_PROMPT:
        assert text not in result.output, result.output[-3000:]


@pytest.mark.parametrize("flags", [["-y"], ["--dry"], []], ids=["yes", "dry", "no-flags"])
def test_missing_multipass_is_named_with_the_install_command(tmp_path, flags):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run(flags, empty, tmp_path / "state")
    assert_clean_stop(result, "multipass not found: install it with ")
    assert "multipass_bin" in result.output
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("flags", [["-y"], ["--dry"]], ids=["yes", "dry"])
def test_a_daemon_that_does_not_answer_stops_the_run_before_connecting(workstation, flags):
    result = run(flags, workstation.bin, workstation.state, env={"FAKE_DAEMON_DOWN": "1"})
    assert_clean_stop(result, "the Multipass daemon does not answer: restart it with ")
    assert workstation.calls() == ["version --format json"], "nothing but the version check ran"
    assert not workstation.state.exists()


def test_an_old_multipass_is_refused_with_the_upgrade_command(workstation):
    result = run(["-y"], workstation.bin, workstation.state, env={"FAKE_DAEMON_VERSION": "1.12.2"})
    assert_clean_stop(result, "Multipass 1.12.2 is older than 1.14.0")
    assert "upgrade it with" in result.output
    assert not workstation.state.exists()


@pytest.mark.parametrize("deploy", ["deploy.py", "teardown.py"])
def test_bad_settings_end_the_run_with_one_error_before_anything_changes(workstation, deploy):
    result = run(["-y", "--data", "calico_pool_encapsulation=GRE", "--data", "natOutgoing=Disabled"],
                 workstation.bin, workstation.state, deploy=deploy)
    assert_clean_stop(result, "invalid lab settings (2 problem(s))", code=2)
    assert "calico_pool_encapsulation: 'GRE' is not valid" in result.output
    assert "natOutgoing: unknown setting; did you mean 'calico_pool_nat_outgoing'?" in result.output
    assert workstation.calls() == [], "settings are checked before Multipass is even asked"
    assert not workstation.state.exists()


def test_without_a_terminal_the_run_asks_for_y_or_dry_instead_of_prompting(workstation):
    result = run([], workstation.bin, workstation.state)
    assert_clean_stop(result, "stdin is not a terminal")
    assert "add -y" in result.output and "--dry" in result.output
    assert not workstation.state.exists()


@pytest.mark.parametrize("image", ["24.04", "22.04"])
def test_ubuntu_image_numbers_are_accepted(workstation, image):
    result = run(["--dry", "--data", f"ubuntu_image={image}"], workstation.bin, workstation.state)
    assert result.returncode == 0, result.output[-3000:]
    assert f"control will be launched ({image}, 2 CPU" in result.output
    assert "invalid lab settings" not in result.output
    assert not workstation.state.exists(), "a dry run creates nothing"


def test_a_state_dir_that_is_a_file_or_too_long_is_refused(workstation, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    result = run(["-y"], workstation.bin, a_file)
    assert_clean_stop(result, "invalid lab settings", code=2)
    assert "is not a folder" in result.output
    assert a_file.read_text() == "keep me"
    long_path = tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 200) / ("g" * 200) / ("h" * 200)
    result = run(["-y"], workstation.bin, long_path)
    assert_clean_stop(result, "invalid lab settings", code=2)
    assert "state_dir" in result.output and "too long" in result.output
    assert not (tmp_path / ("d" * 200)).exists()


def test_teardown_never_touches_a_folder_calicolab_did_not_make(workstation, tmp_path):
    user_folder = tmp_path / "my-documents"
    (user_folder / "photos").mkdir(parents=True)
    files = {"thesis.tex": "chapter 1", "photos/cat.jpg": "meow", "cluster-token": "my own file, by chance"}
    for name, text in files.items():
        (user_folder / name).write_text(text)
    result = run(["-y"], workstation.bin, user_folder, deploy="teardown.py")
    assert_clean_stop(result, "invalid lab settings", code=2)
    assert "not made by calicolab" in result.output
    for name, text in files.items():
        assert (user_folder / name).read_text() == text, name
    assert "delete" not in " ".join(workstation.calls())


def test_teardown_removes_only_calicolab_files_from_its_state_folder(workstation):
    build = run(["-y"], workstation.bin, workstation.state, deploy="teardown.py")  # makes the folder, marker and lock
    assert build.returncode == 0, build.output[-3000:]
    workstation.state.mkdir(exist_ok=True)
    (workstation.state / "calicolab-state").write_text("made by calicolab\n")
    (workstation.state / "cluster-token").write_text("a" * 48 + "\n")
    (workstation.state / "my-notes.md").write_text("mine")
    result = run(["-y"], workstation.bin, workstation.state, deploy="teardown.py")
    assert result.returncode == 0, result.output[-3000:]
    assert sorted(p.name for p in workstation.state.iterdir()) == ["calicolab-state", "my-notes.md"]
    assert (workstation.state / "my-notes.md").read_text() == "mine"
    assert "which calicolab did not write" in result.output
    (workstation.state / "my-notes.md").unlink()
    result = run(["-y"], workstation.bin, workstation.state, deploy="teardown.py")
    assert result.returncode == 0, result.output[-3000:]
    assert not workstation.state.exists(), "with only calicolab's files left, the folder goes too"


def test_a_run_from_another_folder_says_where_to_run(workstation, tmp_path):
    result = run(["--dry"], workstation.bin, workstation.state, cwd=tmp_path,
                 inventory=str(PROJECT / "inventory.py"), deploy=str(PROJECT / "deploy.py"))
    assert_clean_stop(result, "run pyinfra from the calicolab checkout")
    assert f"cd {PROJECT}" in result.output


def test_a_lab_bigger_than_the_workstation_is_warned_about(workstation):
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    per_vm = f"{min(256, machine // 1024**3 // 3 + 1)}G"
    memory = json.dumps({"control": per_vm, "node1": per_vm, "node2": per_vm, "host1": per_vm})
    result = run(["--dry", "--data", f"vm_memory={memory}"], workstation.bin, workstation.state)
    assert result.returncode == 0, result.output[-3000:]
    assert "calicolab: the lab's VMs need" in result.output and "GiB of memory" in result.output
    assert "lower vm_memory" in result.output
    small = run(["--dry"], workstation.bin, workstation.state)
    assert "the lab's VMs need" not in small.output


def _hold_lock(state: Path) -> subprocess.Popen:
    code = ("import sys, time; from calicolab.state import LabState; LabState(sys.argv[1]).lock(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(state)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_one_run_at_a_time_and_a_dead_runs_lock_is_taken_over(workstation):
    holder = _hold_lock(workstation.state)
    try:
        busy = run(["-y"], workstation.bin, workstation.state, deploy="teardown.py")
        assert_clean_stop(busy, f"another calicolab run (pid {holder.pid}, started ")
        assert "holds the lab" in busy.output
        assert "delete" not in " ".join(workstation.calls())
        dry = run(["--dry"], workstation.bin, workstation.state)
        assert dry.returncode == 0, dry.output[-3000:]
        warning = dry.output.index(f"another calicolab run (pid {holder.pid}")
        assert warning < dry.output.index("--> Connecting to hosts"), "said before the plan"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    took_over = run(["-y"], workstation.bin, workstation.state, deploy="teardown.py")
    assert took_over.returncode == 0, took_over.output[-3000:]
    assert f"the calicolab run with pid {holder.pid}" in took_over.output
    assert "taking its lock over" in took_over.output


def test_render_into_a_file_or_an_unwritable_place_is_one_message(tmp_path):
    a_file = tmp_path / "out.txt"
    a_file.write_text("")
    for target, message in ((a_file, "is a file; give a folder"),
                            (Path("/proc/self/calicolab-render"), "cannot write /proc/self/calicolab-render")):
        result = subprocess.run([sys.executable, "-m", "calicolab", "render", str(target)],
                                cwd=PROJECT, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert result.returncode == 2
        assert "calicolab: " in result.stderr and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_render_accepts_ubuntu_image_numbers(tmp_path):
    result = subprocess.run([sys.executable, "-m", "calicolab", "render", str(tmp_path / "out"),
                             "--data", "ubuntu_image=22.04"], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "cloud-init" / "control.yaml").exists()
