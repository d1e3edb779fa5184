"""The local state folder (modes, atomic writes, the cluster token) and secret masking."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys

import pytest

from calicolab import state as state_mod
from calicolab.state import (
    LabState,
    SecretFilter,
    SecretSource,
    StateError,
    install_secret_filter,
    mask,
    register_kubeconfig_secrets,
)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def _no_global_filter_left_behind():
    """Tests that install the process-wide filter remove it again."""

    yield
    for name in ("pyinfra", "pyinfra_cli"):
        logger = logging.getLogger(name)
        for each in [logger, *logger.handlers]:
            if state_mod.SECRET_FILTER in each.filters:
                each.removeFilter(state_mod.SECRET_FILTER)


@pytest.fixture
def lab_state(tmp_path):
    return LabState(tmp_path / "lab" / ".calicolab")


# --- folder and files ---------------------------------------------------------------------


def test_ensure_creates_folder_0700(lab_state):
    old = os.umask(0o022)
    try:
        lab_state.ensure()
    finally:
        os.umask(old)
    assert lab_state.path.is_dir()
    assert mode_of(lab_state.path) == 0o700


def test_ensure_tightens_a_loose_folder(lab_state):
    lab_state.path.mkdir(parents=True, mode=0o755)
    os.chmod(lab_state.path, 0o755)
    lab_state.ensure()
    assert mode_of(lab_state.path) == 0o700


def test_ensure_refuses_a_file(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(StateError, match="not a directory"):
        LabState(tmp_path / "x").ensure()


def test_write_private_is_0600_and_atomic(lab_state):
    old = os.umask(0o000)
    try:
        path = lab_state.write_private("kubeconfig.yaml", "a: 1\n")
    finally:
        os.umask(old)
    assert path == lab_state.kubeconfig_path
    assert path.read_text() == "a: 1\n"
    assert mode_of(path) == 0o600
    assert mode_of(lab_state.path) == 0o700
    lab_state.write_private("kubeconfig.yaml", b"a: 2\n")
    assert path.read_bytes() == b"a: 2\n"
    assert mode_of(path) == 0o600
    # no temporary files left behind
    assert sorted(p.name for p in lab_state.path.iterdir()) == ["calicolab-state", "kubeconfig.yaml"]


def test_write_private_if_changed(lab_state):
    assert lab_state.write_private_if_changed("kubeconfig.yaml", "x\n") is True
    before = os.stat(lab_state.kubeconfig_path).st_mtime_ns
    assert lab_state.write_private_if_changed("kubeconfig.yaml", "x\n") is False
    assert os.stat(lab_state.kubeconfig_path).st_mtime_ns == before
    assert lab_state.write_private_if_changed("kubeconfig.yaml", "y\n") is True


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", ".."])
def test_file_names_are_checked(lab_state, bad):
    with pytest.raises(StateError):
        lab_state.write_private(bad, "x")


def test_read_private_tightens_a_loose_file(lab_state):
    path = lab_state.write_private("kubeconfig.yaml", "x")
    os.chmod(path, 0o644)
    assert lab_state.read_private("kubeconfig.yaml") == b"x"
    assert mode_of(path) == 0o600


def test_read_private_missing_creates_nothing(lab_state):
    assert lab_state.read_private("kubeconfig.yaml") is None
    assert not lab_state.path.exists()


def test_remove_deletes_calicolab_files_and_the_folder(lab_state):
    lab_state.write_private("kubeconfig.yaml", "x")
    lab_state.cluster_token()
    assert (lab_state.path / "calicolab-state").is_file(), "ensure() writes the marker"
    assert lab_state.remove() == []
    assert not lab_state.path.exists()
    assert lab_state.remove() == []


def test_remove_keeps_files_calicolab_did_not_write(lab_state):
    lab_state.write_private("kubeconfig.yaml", "x")
    (lab_state.path / "notes.txt").write_text("mine")
    assert lab_state.remove() == ["notes.txt"]
    assert (lab_state.path / "notes.txt").read_text() == "mine"
    assert not (lab_state.path / "kubeconfig.yaml").exists()


def test_a_folder_without_the_marker_is_neither_used_nor_removed(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(StateError, match="not made by calicolab"):
        LabState(folder).ensure()
    with pytest.raises(StateError, match="not made by calicolab"):
        LabState(folder).remove()
    assert (folder / "cat.jpg").read_bytes() == b"meow"
    assert sorted(os.listdir(folder)) == ["cat.jpg"]


def test_a_state_folder_from_before_the_marker_is_adopted(tmp_path):
    folder = tmp_path / ".calicolab"
    folder.mkdir(mode=0o700)
    (folder / "cluster-token").write_text("a" * 48 + "\n")
    LabState(folder).ensure()
    assert (folder / "calicolab-state").is_file()


def test_lock_is_exclusive_and_names_its_holder(lab_state):
    fd, stale = lab_state.lock()
    try:
        assert stale is None
        holder = lab_state.lock_holder()
        assert holder["pid"] == str(os.getpid()) and holder["started"]
        with pytest.raises(state_mod.LabBusy, match=rf"another calicolab run \(pid {os.getpid()}, started "):
            lab_state.lock()
    finally:
        LabState.unlock(fd)
    assert lab_state.lock_holder() is None
    fd, stale = lab_state.lock()
    LabState.unlock(fd)
    assert stale is None, "a lock released cleanly is not stale"


def test_a_lock_left_by_a_killed_run_is_taken_over(lab_state):
    code = (
        "import os, sys; from calicolab.state import LabState; "
        "LabState(sys.argv[1]).lock(); os.kill(os.getpid(), 9)"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(lab_state.path)])
    assert killed.returncode == -9
    assert lab_state.lock_holder() is None, "the kernel released the dead run's flock"
    fd, stale = lab_state.lock()
    LabState.unlock(fd)
    assert stale and stale["pid"] != str(os.getpid())


# --- cluster token --------------------------------------------------------------------------


def test_cluster_token_generated_once_and_stable(lab_state):
    assert lab_state.peek_cluster_token() is None
    assert not lab_state.path.exists()  # peeking never creates anything
    token = lab_state.cluster_token()
    assert len(token) == 48 and int(token, 16) >= 0
    assert mode_of(lab_state.token_path) == 0o600
    assert mode_of(lab_state.path) == 0o700
    assert lab_state.token_path.read_text() == token + "\n"
    assert lab_state.cluster_token() == token
    assert LabState(lab_state.path).cluster_token() == token  # another process / run
    assert lab_state.peek_cluster_token() == token
    assert sorted(p.name for p in lab_state.path.iterdir()) == ["calicolab-state", "cluster-token"]


def test_cluster_token_differs_between_labs(tmp_path):
    assert LabState(tmp_path / "a").cluster_token() != LabState(tmp_path / "b").cluster_token()


def test_cluster_token_race_keeps_the_first(lab_state, monkeypatch):
    """If another process publishes a token between our check and our link, we use theirs."""

    other = "f" * 48
    real_link = os.link

    def racing_link(src, dst):
        lab_state.ensure()
        with open(dst, "w") as f:
            f.write(other + "\n")
        return real_link(src, dst)  # now fails with FileExistsError

    monkeypatch.setattr(state_mod.os, "link", racing_link)
    assert lab_state.cluster_token() == other
    assert sorted(p.name for p in lab_state.path.iterdir()) == ["calicolab-state", "cluster-token"]


def test_corrupt_token_file_is_an_error(lab_state):
    lab_state.write_private("cluster-token", "not a token!\n")
    with pytest.raises(StateError, match="valid k3s token"):
        lab_state.cluster_token()


def test_token_source_peek_never_writes(lab_state):
    source = lab_state.cluster_token_source()
    assert isinstance(source, SecretSource)
    assert source.peek() is None
    assert not lab_state.path.exists()
    assert "will generate the cluster token" in source.missing
    data = source.ensure()
    assert data == (lab_state.cluster_token() + "\n").encode()
    assert source.peek() == data
    # the value never shows in its representation
    assert lab_state.cluster_token() not in repr(source) + str(source)


def test_kubeconfig_source(lab_state):
    source = lab_state.kubeconfig_source()
    assert source.peek() is None
    with pytest.raises(StateError, match="not fetched"):
        source.ensure()
    lab_state.write_private("kubeconfig.yaml", "apiVersion: v1\n")
    assert source.ensure() == b"apiVersion: v1\n"


def test_token_generation_is_not_logged(lab_state, caplog):
    caplog.set_level(logging.DEBUG)
    token = lab_state.cluster_token()
    assert "generated a new k3s cluster token" in caplog.text
    assert token not in caplog.text


# --- masking --------------------------------------------------------------------------------


def test_mask():
    assert mask("token=abc123456 and abc123456", ["abc123456"]) == "token=*** and ***"
    assert mask("nothing", []) == "nothing"
    assert mask("xx-long-secret-xx", ["long-secret", "xx-long-secret-xx"]) == "***"
    assert mask("a", [""]) == "a"


def test_secret_filter_masks_message_and_args():
    flt = SecretFilter(["s3cr3t-value"])
    record = logging.LogRecord("pyinfra", logging.INFO, __file__, 1, "got %s in %s", ("s3cr3t-value", "x"), None)
    assert flt.filter(record) is True
    assert record.getMessage() == "got *** in x"
    record = logging.LogRecord("pyinfra", logging.INFO, __file__, 1, "plain s3cr3t-value", (), None)
    flt.filter(record)
    assert record.getMessage() == "plain ***"


def test_secret_filter_ignores_too_short_values():
    flt = SecretFilter(["ab", ""])
    assert flt.secrets == frozenset()


def test_installed_filter_masks_pyinfra_logs(lab_state, caplog):
    token = lab_state.cluster_token()  # registered with the global filter
    pyinfra_logger = logging.getLogger("pyinfra")
    handler = logging.StreamHandler()
    pyinfra_logger.addHandler(handler)
    try:
        flt = install_secret_filter()
        assert flt in pyinfra_logger.filters and flt in handler.filters
        install_secret_filter()  # idempotent
        assert pyinfra_logger.filters.count(flt) == 1
        caplog.set_level(logging.DEBUG)
        pyinfra_logger.info("the token is %s", token)
        logging.getLogger("pyinfra.api").warning(f"inline {token}")
    finally:
        pyinfra_logger.removeHandler(handler)
    assert token not in caplog.text
    assert "the token is ***" in caplog.text
    # the child logger record was masked by the handler filter (caplog sees it before the
    # StreamHandler, so check the handler's filter directly)
    record = logging.LogRecord("pyinfra.api", logging.INFO, __file__, 1, f"x {token}", (), None)
    flt.filter(record)
    assert token not in record.getMessage()


def test_kubeconfig_secrets_are_registered():
    key = "LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCk1IY0NBUUVFSUtleQ=="
    register_kubeconfig_secrets(f"users:\n- name: default\n  user:\n    client-key-data: {key}\n")
    assert key in state_mod.SECRET_FILTER.secrets
