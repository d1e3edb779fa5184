"""Phase 2: k3s on the lab VMs, and host1 ready to work with the cluster.

Each function is called by the deploy on every host and picks its own hosts; the deploy puts a
barrier between them (cross-host order, see docs/DESIGN.md):

1. ``installed(lab)``      every VM at once: the files from the workstation's download cache (k3s
   and its installer on control, node1, node2; kubectl and calicoctl on host1); on the k3s nodes
   the join token, config, install and service, on control then the API; on host1 BIRD and the
   shell profile. The server and the agents install together: the token is made on the
   workstation, and an agent retries until its server answers;
2. ``cluster_joined(lab)`` control: all nodes registered (NotReady until Calico), admin kubeconfig
   copied into the local state folder;
3. ``client(lab)``         host1: the admin kubeconfig.

pyinfra runs one operation at a time on all the hosts that have it, so the slow steps (downloads,
installs) are each one operation shared by the VMs (called from one line), not one per role.
The join token is generated once per lab in the local state folder and uploaded as a file; it
never appears in commands, arguments, diffs or logs.
"""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.operations import files, systemd

from calicolab.constants import (
    AGENTS,
    BIRD_CONFIG_PATH,
    CLIENT,
    HOST1_KUBECONFIG_PATH,
    K3S_CONFIG_PATH,
    K3S_TOKEN_PATH,
    SERVER,
)
from calicolab.downloads import Download, workstation_arch
from calicolab.model import lab_for_host
from calicolab.operations import k3s, tools
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


def _text_file(what: str, dest: str, text: str, mode: str):
    """A rendered file (shown as a diff with ``--diff``); its folder exists already."""

    return files.put(name=what, src=io.StringIO(text), dest=dest, user="root", group="root", mode=mode,
                     create_remote_dir=False, _sudo=True)


def installed(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name not in lab.vms:
        return
    install_secret_filter()
    role = "server" if host.name == SERVER else "agent" if host.name in AGENTS else None
    tools_in_place = tools.downloads_installed(
        name=f"{host.name}: {'k3s and its installer' if role else 'kubectl and calicoctl'} from the workstation cache",
        files=k3s.k3s_downloads(lab) if role else client_downloads(lab),
        _sudo=True,
    )
    if role is None:
        _client_tools(lab)
        return

    unit = k3s.UNITS[role]
    token = k3s.secret_file(
        name=f"k3s {role}: join token file",
        path=K3S_TOKEN_PATH,
        content=LabState(lab.state_path).cluster_token_source(),
        _sudo=True,
    )
    config = _text_file(f"k3s {role}: configuration", K3S_CONFIG_PATH, render_k3s_config(lab, host.name), "0600")
    install = k3s.installed(
        name=f"k3s {role}: installed ({lab.k3s_version})",
        role=role,
        server_url=lab.api_url if role == "agent" else None,
        _sudo=True,
    )
    systemd.service(name=f"k3s {role}: {unit} running", service=unit, running=True, enabled=True, _sudo=True)
    # The installer starts k3s itself; a new binary, config or token needs a restart.
    systemd.service(
        name=f"k3s {role}: restart {unit} (binary, configuration or token changed)",
        service=unit,
        running=True,
        restarted=True,
        enabled=True,
        _if=lambda: (tools_in_place.did_change() or config.did_change() or token.did_change())
        and not install.did_change(),
        _sudo=True,
    )
    if role == "server":
        k3s.api_ready(name="k3s server: API ready", timeout=lab.timeout_k3s_ready, _sudo=True)


def _client_tools(lab) -> None:
    """host1's BIRD and shell profile: nothing here waits for the cluster."""

    bird_conf = _text_file("host1: BIRD configuration", BIRD_CONFIG_PATH, render_bird_conf(lab), "0644")
    systemd.service(name="host1: BIRD running", service="bird", running=True, enabled=True, _sudo=True)
    systemd.service(
        name="host1: restart BIRD (configuration changed)",
        service="bird",
        running=True,
        restarted=True,
        _if=bird_conf.did_change,
        _sudo=True,
    )
    _text_file("host1: shell profile (KUBECONFIG, DATASTORE_TYPE, calicoctl alias)", tools.PROFILE_PATH,
               render_profile(lab), "0644")


def cluster_joined(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name != SERVER:
        return
    install_secret_filter()
    k3s.node_registered(
        name="k3s: all nodes registered (NotReady until Calico)",
        names=[SERVER, *AGENTS],
        timeout=lab.timeout_k3s_ready,
        _sudo=True,
    )
    k3s.kubeconfig_fetched(name="k3s: admin kubeconfig in the local state folder", lab=lab, _sudo=True)


def client(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name != CLIENT:
        return
    install_secret_filter()
    k3s.kubeconfig_installed(
        name="host1: admin kubeconfig for ubuntu",
        lab=lab,
        path=HOST1_KUBECONFIG_PATH,
        user="ubuntu",
        _sudo=True,
    )
