"""The one read of a VM that the deploy plans from (``calicolab.facts.vm``): its command run by a real
shell against real files, checked against ``os.stat`` and ``hashlib``, and the comparisons made on it."""

import grp
import hashlib
import os
import pwd
import subprocess

import pytest

from calicolab.facts.vm import VmNow, VmState
from calicolab.operations.k3s import rewrite_kubeconfig

SYSTEMCTL = """#!/bin/sh
# `systemctl show -p ActiveState -p UnitFileState UNIT` as systemd prints it (in its own property order,
# whatever the order of -p): k3s runs, bird is stopped and disabled, "gone" does not exist
[ "$1 $2 $3 $4 $5" = "show -p ActiveState -p UnitFileState" ] || exit 64
case "$6" in
  k3s) printf 'ActiveState=active\nUnitFileState=enabled\n';;
  bird) printf 'ActiveState=inactive\nUnitFileState=disabled\n';;
  gone) printf 'ActiveState=inactive\nUnitFileState=\n';;
esac
"""


@pytest.fixture
def shell_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"systemctl": SYSTEMCTL, "cloud-init": "#!/bin/sh\necho 'status: done'\n"}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def read(command: str, env) -> dict:
    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return VmState().process(result.stdout.splitlines())


def owner(path) -> tuple[str, str]:
    info = os.stat(path)
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name


def test_files_folders_and_absent_paths_are_read_as_stat_and_sha256_see_them(tmp_path, shell_env):
    config = tmp_path / "my dir" / "config.yaml"
    config.parent.mkdir()
    config.write_text("flannel-backend: none\n")
    config.chmod(0o600)
    folder = tmp_path / "kube"
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)
    missing = tmp_path / "nothing"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o640)

    answer = read(VmState().command(files=[str(config), str(folder), str(missing), str(fifo)]), shell_env)

    user, group = owner(config)
    assert answer["files"][str(config)] == {
        "type": "file", "mode": "600", "user": user, "group": group,
        "sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
    }
    assert answer["files"][str(folder)] == {"type": "directory", "mode": "700", "user": user, "group": group}
    assert answer["files"].get(str(missing)) is None
    assert answer["files"][str(fifo)] == {"type": "other", "mode": "640", "user": user, "group": group}
    now = VmNow(True, answer["first_boot"], answer["files"], answer["units"])
    assert now.exists(str(folder)) and not now.exists(str(missing))
    assert answer["first_boot"]["status"] == "done"


def test_units_are_read_as_systemctl_prints_them(shell_env):
    answer = read(VmState().command(units=["k3s", "bird", "gone"]), shell_env)
    assert answer["units"] == {
        "k3s": {"active": "active", "enabled": "enabled"},
        "bird": {"active": "inactive", "enabled": "disabled"},
        "gone": {"active": "inactive", "enabled": ""},
    }
    now = VmNow(True, answer["first_boot"], answer["files"], answer["units"])
    assert now.unit_runs("k3s") and not now.unit_runs("bird") and not now.unit_runs("gone")


def test_the_kubeconfig_hash_is_the_rewritten_copy_s_as_the_fetch_step_computes_it(tmp_path, shell_env):
    kubeconfig = tmp_path / "k3s.yaml"
    text = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:6443\n  name: default\n"
    kubeconfig.write_text(text)
    server = "https://198.19.0.1:6443"

    answer = read(VmState().command(kubeconfig=(str(kubeconfig), server)), shell_env)

    fetched = rewrite_kubeconfig(text, server).encode()  # what the fetch step stores locally
    assert answer["rewritten_sha256"] == hashlib.sha256(fetched).hexdigest()
    now = VmNow(True, answer["first_boot"], answer["files"], answer["units"], answer["rewritten_sha256"])
    assert now.kubeconfig_matches(fetched) and not now.kubeconfig_matches(text.encode())
    assert not now.kubeconfig_matches(None), "no local copy yet: it must be fetched"
    assert read(VmState().command(kubeconfig=(str(tmp_path / "none"), server)), shell_env)["rewritten_sha256"] is None


def test_a_vm_that_is_not_running_while_planning_answers_nothing_and_nothing_matches():
    assert VmState().process([]) is None
    unknown = VmNow()
    assert not unknown.file_matches("/etc/x", sha256="0" * 64)
    assert not unknown.exists("/etc/x") and not unknown.unit_runs("k3s") and not unknown.first_boot_done()


def now_with(path: str, **found) -> VmNow:
    entry = {"type": "file", "mode": "600", "user": "root", "group": "root",
             "sha256": hashlib.sha256(b"token\n").hexdigest(), **found}
    return VmNow(True, {"status": "done"}, {path: entry}, {})


@pytest.mark.parametrize("found, matches", [
    ({}, True),
    ({"sha256": "f" * 64}, False),
    ({"mode": "644"}, False),
    ({"user": "ubuntu"}, False),
    ({"group": "ubuntu"}, False),
    ({"type": "directory"}, False),
])
def test_a_file_matches_only_with_its_content_mode_and_owners(found, matches):
    now = now_with("/etc/rancher/k3s/calicolab-token", **found)
    assert now.file_matches("/etc/rancher/k3s/calicolab-token", content="token\n", mode="0600", user="root",
                            group="root") is matches


def test_content_that_is_not_known_yet_never_matches():
    """A join token not generated yet (sha256 None) must not read as "in place"."""
    now = now_with("/etc/rancher/k3s/calicolab-token")
    assert not now.file_matches("/etc/rancher/k3s/calicolab-token", sha256=None)
    assert now.file_matches("/etc/rancher/k3s/calicolab-token", sha256=hashlib.sha256(b"token\n").hexdigest())


def test_output_that_is_not_the_read_s_is_refused():
    from pyinfra.api.exceptions import FactProcessError

    with pytest.raises(FactProcessError):
        VmState().process(["some other program's output"])
    with pytest.raises(FactProcessError):
        VmState().process(["### first-boot", "### end first-boot", "###stat", "f 600 root"])


def test_an_installed_binary_is_read_at_its_stamp_while_its_size_and_time_stay_and_hashed_once_they_change(
        tmp_path, shell_env, monkeypatch):
    import calicolab.facts.vm as vm

    monkeypatch.setattr(vm, "STAMPS_DIR", str(tmp_path / "verified"))
    binary, config = tmp_path / "k3s", tmp_path / "config.yaml"
    binary.write_bytes(b"k3s v1\n")
    config.write_text("a: 1\n")
    # the install step's own command, in a real shell, records the digest with the size and time
    subprocess.run(["sh", "-c", vm.stamp_command(str(binary))], env=shell_env, check=True, timeout=30)
    assert open(vm.stamp_path(str(binary))).read().split()[0] == hashlib.sha256(b"k3s v1\n").hexdigest()
    hashed = tmp_path / "hashed"  # a sha256sum that notes what it is asked to hash
    (tmp_path / "bin" / "sha256sum").write_text(f'#!/bin/sh\necho "$@" >> {hashed}\nexec /usr/bin/sha256sum "$@"\n')
    (tmp_path / "bin" / "sha256sum").chmod(0o755)

    def sha256_read():
        hashed.unlink(missing_ok=True)
        files = read(VmState().command(files=[str(binary), str(config)]), shell_env)["files"]
        return files[str(binary)]["sha256"], files[str(config)]["sha256"], hashed.read_text().split()

    digest, config_digest, asked = sha256_read()
    assert digest == hashlib.sha256(b"k3s v1\n").hexdigest() and str(binary) not in asked
    assert config_digest == hashlib.sha256(b"a: 1\n").hexdigest() and str(config) in asked  # no stamp: hashed
    # the stamp's digest is what is taken (here one that is not the file's, to tell them apart)
    stamp = tmp_path / "verified" / os.path.basename(vm.stamp_path(str(binary)))
    size_and_time = stamp.read_text().split()[1:]
    stamp.write_text(" ".join(["f" * 64, *size_and_time]) + "\n")
    assert sha256_read()[0] == "f" * 64
    # replaced (another size and time): hashed again, the stamp no longer counts
    binary.write_bytes(b"k3s v2, another build\n")
    digest, _, asked = sha256_read()
    assert digest == hashlib.sha256(b"k3s v2, another build\n").hexdigest() and str(binary) in asked
