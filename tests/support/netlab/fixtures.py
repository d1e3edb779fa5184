"""pytest fixtures for the namespace lab. Import them from a conftest.py:

    from tests.support.netlab.fixtures import netlab, netlab_mirror  # noqa: F401

``netlab``: a fresh :class:`~tests.support.netlab.lab.NetLab` (switch + workstation namespaces, no VMs yet; the
``multipass`` double creates them). Skips when not root or tools are missing. The finalizer always tears down
(SIGKILL to VM inits, ``ip netns del``) and asserts: none of the lab's namespaces left, the root namespace's
``ip route`` and ``ip -br addr`` unchanged, no overlay mount of the lab left, no helper process left.

``netlab_mirror``: the lab plus the download mirror (fake k3s installer/binary, kubectl, calicoctl) served on
http://203.0.113.1:8080 inside the workstation namespace; ``netlab_mirror.data`` are the ``--data`` overrides.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading

import pytest

from .lab import NetLab, _pid_alive


def _root_view():
    route = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    addr = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    return route, addr


def netlab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "netlab needs root (network, mount and pid namespaces)"
    for tool in ("ip", "unshare", "nsenter", "setpriv"):
        if not shutil.which(tool):
            return f"netlab needs {tool}"
    return None


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def netlab_session():
    """A fresh NetLab for the duration of the block; always torn down and checked afterwards."""
    reason = netlab_skip_reason()
    if reason:
        pytest.skip(reason)
    route_before, addr_before = _root_view()
    prefix = "cl" + secrets.token_hex(2)
    # not under pytest's tmp_path: a concurrent pytest session may prune old basetemp directories
    workdir = tempfile.mkdtemp(prefix=f"netlab-{prefix}-")
    lab = NetLab(prefix, workdir)
    # `timeout` and CI runners stop a run with SIGTERM, whose default action skips this teardown and
    # leaves the namespaces behind: turn it into SystemExit so the finally block below runs.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        lab.setup()
        yield lab
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        try:
            vms = lab.state()["vms"].values()
            pids = [vm.get(key) for vm in vms for key in ("init_pid", "holder_pid")] + lab.state().get("pids", [])
        except FileNotFoundError:
            pids = []
        problems = lab.teardown()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        problems += [f"namespace {ns} left" for ns in left if ns.startswith(prefix + "-")]
        route_after, addr_after = _root_view()
        if route_after != route_before:
            problems.append(f"root ip route changed:\n{route_before}->\n{route_after}")
        if addr_after != addr_before:
            problems.append(f"root addresses changed:\n{addr_before}->\n{addr_after}")
        with open("/proc/self/mountinfo") as f:
            mounts = [ln for ln in f if str(lab.workdir) in ln]
        problems += [f"mount left: {ln.strip()}" for ln in mounts]
        problems += [f"process {p} left" for p in pids if p and _pid_alive(p)]
        if not problems:
            shutil.rmtree(workdir, ignore_errors=True)
        assert not problems, "netlab teardown: " + "; ".join(problems)


@pytest.fixture
def netlab():
    with netlab_session() as lab:
        yield lab


@pytest.fixture
def netlab_mirror(netlab):
    from .mirror import Mirror

    mirror = Mirror(netlab).start()
    yield mirror
    mirror.stop()
