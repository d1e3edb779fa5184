"""Phase 2: k3s on the lab VMs, and host1 ready to work with the cluster.

Each function is called by the deploy on every host and picks its own hosts; the deploy puts a
barrier between them (cross-host order, see docs/DESIGN.md):

1. ``installed(lab)``      every VM at once: the files from the workstation's download cache (k3s
   and its installer on control, node1, node2; kubectl and calicoctl on host1); the configuration
   files (the join token and k3s' config on the k3s nodes, BIRD's and the shell profile on host1);
   k3s' installer; the service (k3s, k3s-agent, bird) running, restarted when its files changed;
   on control then the API. The server and the agents install together: the token is made on the
   workstation, and an agent retries until its server answers;
2. ``cluster_joined(lab)`` control: all nodes registered (NotReady until Calico), admin kubeconfig
   copied into the local state folder;
3. ``client(lab)``         host1: the admin kubeconfig.

pyinfra runs one operation at a time on all the hosts that have it, so each step is one operation
shared by the VMs (called from one line), not one per role: no VM waits for a step of another's.
Steps that the deploy's one read of a VM (``vm_now``) shows done are left out.
The join token is generated once per lab in the local state folder and uploaded as a file; it
never appears in commands, arguments, diffs or logs.
"""

from __future__ import annotations

import posixpath

from pyinfra import host
from pyinfra.operations import systemd

from calicolab.constants import (
    AGENTS,
    BIRD_CONFIG_PATH,
    CLIENT,
    HOST1_KUBECONFIG_PATH,
    K3S_CONFIG_PATH,
    K3S_KUBECONFIG_PATH,
    K3S_TOKEN_PATH,
    SERVER,
)
from calicolab.downloads import Download, DownloadCache, workstation_arch
from calicolab.facts.vm import VmNow
from calicolab.kube.client import KubeError
from calicolab.model import lab_for_host
from calicolab.operations import k3s, kubernetes, tools
from calicolab.operations.tools import ConfigFile
from calicolab.render import render_bird_conf, render_k3s_config, render_profile
from calicolab.state import LabState, install_secret_filter

KUBECTL_PATH = "/usr/local/bin/kubectl"
CALICOCTL_PATH = "/usr/local/bin/calicoctl"


def client_downloads(lab) -> dict[str, Download]:
    """host1's tools by their paths in the VM, each with its published checksum file."""

    arch = workstation_arch()

    def url(template: str, version: str) -> str:
        return template.format(version=version, arch=arch)

    return {
        KUBECTL_PATH: Download(url(lab.kubectl_url, lab.kubectl_version), url(lab.kubectl_sha256_url, lab.kubectl_version)),
        CALICOCTL_PATH: Download(url(lab.calicoctl_url, lab.calicoctl_version),
                                 url(lab.calicoctl_sha256_url, lab.calicoctl_version)),
    }


def downloads_started(lab=None) -> None:
    """On the workstation: every file phase 2 copies into the VMs starts downloading now."""

    lab = lab or lab_for_host(host)
    if host.name != "@local":
        return
    tools.downloads_started(
        name="Downloads for the VMs (k3s, kubectl, calicoctl) into the workstation cache",
        files=[*k3s.k3s_downloads(lab).values(), *client_downloads(lab).values()],
    )


def vm_now(lab=None, probe: str | None = None) -> VmNow:
    """What this VM has of phases 1 and 2 (its first boot, the files and services below), read in one
    command while the deploy is planned; the steps it shows done are left out of the plan. Unknown
    (every step stays) on the workstation and on a VM that is not running yet. ``probe``: a script run
    last in the same command (the report card's, see ``tasks.verify.vm_probe``)."""

    lab = lab or lab_for_host(host)
    if host.name not in lab.vms:
        return VmNow()
    role = _role(host.name)
    _, wanted = _config_files(lab, role)
    files = [*_binaries(lab, role), *(item.path for item in wanted)]
    if role is None:
        return VmNow.read(host, files=[*files, HOST1_KUBECONFIG_PATH, posixpath.dirname(HOST1_KUBECONFIG_PATH)],
                          units=["bird"], probe=probe)
    return VmNow.read(
        host,
        files=[*files, k3s.unit_file(role)],
        units=[k3s.UNITS[role]],
        kubeconfig=(K3S_KUBECONFIG_PATH, lab.api_url) if role == "server" else None,
        probe=probe,
    )


def _role(name: str) -> str | None:
    return "server" if name == SERVER else "agent" if name in AGENTS else None


def _binaries(lab, role: str | None) -> dict[str, Download]:
    return k3s.k3s_downloads(lab) if role else client_downloads(lab)


def _config_files(lab, role: str | None) -> tuple[str, list[ConfigFile]]:
    """The VM's configuration files, and the name of the step that puts them in place."""
    if role:
        return f"k3s {role}: join token and configuration", [
            ConfigFile(K3S_TOKEN_PATH, LabState(lab.state_path).cluster_token_source(), "0600"),
            ConfigFile(K3S_CONFIG_PATH, render_k3s_config(lab, host.name), "0600"),
        ]
    return "host1: BIRD configuration and shell profile", [
        ConfigFile(BIRD_CONFIG_PATH, render_bird_conf(lab), "0644"),
        ConfigFile(tools.PROFILE_PATH, render_profile(lab), "0644"),
    ]


def _in_place(now: VmNow, item: ConfigFile) -> bool:
    """Whether ``now`` shows ``item`` in place (a secret not made yet never is)."""
    content = item.content if isinstance(item.content, str) else item.content.peek()
    return now.file_matches(item.path, content=content, mode=item.mode, user=item.user, group=item.group)


def _service_running(now: VmNow, unit: str, running: str, restart: str, after: list, unless=None) -> None:
    """``unit`` active and enabled (operation ``running``), and restarted (operation ``restart``) when a
    step in ``after`` (operations; None for a step left out) changes something it reads, unless the
    step ``unless`` changed (the installer, which starts the service itself)."""

    if not now.unit_runs(unit):
        systemd.service(name=running, service=unit, running=True, enabled=True, _sudo=True)
    changes = [step for step in after if step is not None]
    if changes:
        systemd.service(
            name=restart,
            service=unit,
            running=True,
            restarted=True,
            enabled=True,
            _if=lambda: any(step.did_change() for step in changes) and not (unless is not None and unless.did_change()),
            _sudo=True,
        )


def _downloads(now: VmNow, what: str, items: dict[str, Download]):
    """The files from the workstation's download cache, unless ``now`` shows each one in place with the
    cached file's sha256. Returns the operation, or None when it is left out."""

    cache = DownloadCache.default()
    cached = {dest: cache.cached(item) for dest, item in items.items()}
    if all(found and now.file_matches(dest, sha256=found.sha256) for dest, found in cached.items()):
        return None
    return tools.downloads_installed(name=what, files=items, _sudo=True)


def installed(lab=None, now: VmNow | None = None) -> None:
    lab = lab or lab_for_host(host)
    now = now or VmNow()
    if host.name not in lab.vms:
        return
    install_secret_filter()
    role = _role(host.name)
    binaries = _downloads(
        now,
        f"{host.name}: {'k3s and its installer' if role else 'kubectl and calicoctl'} from the workstation cache",
        _binaries(lab, role),
    )
    # One step for every VM's configuration files, so that none waits for another's.
    files_step, wanted = _config_files(lab, role)
    differing = [item for item in wanted if not _in_place(now, item)]
    config = tools.config_files(name=files_step, files=differing, _sudo=True) if differing else None

    install = None
    if role and not now.exists(k3s.unit_file(role)):
        install = k3s.installed(
            name=f"k3s {role}: installed ({lab.k3s_version})",
            role=role,
            server_url=lab.api_url if role == "agent" else None,
            _sudo=True,
        )

    if role:
        unit = k3s.UNITS[role]
        # a new binary, config or token needs a restart (the installer starts k3s itself)
        _service_running(now, unit, f"k3s {role}: {unit} running",
                         f"k3s {role}: restart {unit} (binary, configuration or token changed)",
                         [binaries, config], unless=install)
    else:
        unit = "bird"
        # the shell profile is no reason to restart BIRD
        bird_changes = config is not None and any(item.path == BIRD_CONFIG_PATH for item in differing)
        _service_running(now, unit, "host1: BIRD running", "host1: restart BIRD (configuration changed)",
                         [config] if bird_changes else [])

    if role == "server" and (not now.unit_runs(unit) or any(step is not None for step in (binaries, config, install))):
        k3s.api_ready(name="k3s server: API ready", timeout=lab.timeout_k3s_ready, _sudo=True)


def cluster_joined(lab=None, now: VmNow | None = None) -> None:
    lab = lab or lab_for_host(host)
    now = now or VmNow()
    if host.name != SERVER:
        return
    install_secret_filter()
    names = [SERVER, *AGENTS]
    if not _registered(lab, names):
        k3s.node_registered(
            name="k3s: all nodes registered (NotReady until Calico)",
            names=names,
            timeout=lab.timeout_k3s_ready,
            _sudo=True,
        )
    if not now.kubeconfig_matches(LabState(lab.state_path).read_kubeconfig()):
        k3s.kubeconfig_fetched(name="k3s: admin kubeconfig in the local state folder", lab=lab, _sudo=True)


def _registered(lab, names: list[str]) -> bool:
    """Whether the API (through the run's one connection) lists every node of ``names``; False when it
    cannot be asked yet."""
    try:
        nodes = kubernetes.kube_session(lab, host).list("v1", "Node")
    except KubeError:
        return False
    return k3s.registered_check([node["metadata"]["name"] for node in nodes], names).done


def client(lab=None, now: VmNow | None = None) -> None:
    lab = lab or lab_for_host(host)
    now = now or VmNow()
    if host.name != CLIENT:
        return
    install_secret_filter()
    user = "ubuntu"
    if now.file_matches(HOST1_KUBECONFIG_PATH, content=LabState(lab.state_path).read_kubeconfig(),
                        mode="0600", user=user, group=user) and now.directory_matches(
            posixpath.dirname(HOST1_KUBECONFIG_PATH), mode="0700", user=user, group=user):
        return
    k3s.kubeconfig_installed(
        name="host1: admin kubeconfig for ubuntu",
        lab=lab,
        path=HOST1_KUBECONFIG_PATH,
        user=user,
        _sudo=True,
    )
