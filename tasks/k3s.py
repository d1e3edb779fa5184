"""Phase 2: k3s on the lab VMs, and host1 ready to work with the cluster.

Each function is called by the deploy on every host and picks its own hosts; the deploy puts a
barrier between them (pyinfra orders operations per host: ``State.get_op_order``):

1. ``server(lab)``        control: join token, config, install, service, API ready;
2. ``agents(lab)``        node1, node2: join token, config, install, service;
3. ``cluster_joined(lab)`` control: all nodes registered (NotReady until Calico), admin kubeconfig
   copied into the local state folder;
4. ``client(lab)``        host1: BIRD, kubectl, calicoctl, kubeconfig, shell profile.

The join token is generated once per lab in the local state folder and uploaded as a file; it
never appears in commands, arguments, diffs or logs.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import systemd

from calicolab.constants import (
    AGENTS,
    BIRD_CONFIG_PATH,
    CLIENT,
    HOST1_KUBECONFIG_PATH,
    K3S_TOKEN_PATH,
    SERVER,
)
from calicolab.model import lab_for_host
from calicolab.operations import k3s, tools
from calicolab.render import render_bird_conf, render_profile
from calicolab.state import LabState, install_secret_filter

KUBECTL_PATH = "/usr/local/bin/kubectl"
CALICOCTL_PATH = "/usr/local/bin/calicoctl"


def _k3s_node(lab, role: str, unit: str) -> None:
    """Token file, config, install and service for the current VM (server or agent)."""

    install_secret_filter()
    token = k3s.secret_file(
        name=f"k3s {role}: join token file",
        path=K3S_TOKEN_PATH,
        content=LabState(lab.state_path).cluster_token_source(),
        _sudo=True,
    )
    config = k3s.config(name=f"k3s {role}: configuration", lab=lab, vm=host.name, _sudo=True)
    install = k3s.installed(
        name=f"k3s {role}: installed ({lab.k3s_version})",
        version=lab.k3s_version,
        role=role,
        install_url=lab.k3s_install_url,
        server_url=lab.api_url if role == "agent" else None,
        _sudo=True,
    )
    systemd.service(name=f"k3s {role}: {unit} running", service=unit, running=True, enabled=True, _sudo=True)
    # The installer restarts k3s itself; otherwise a new config or token needs a restart.
    systemd.service(
        name=f"k3s {role}: restart {unit} (configuration or token changed)",
        service=unit,
        running=True,
        restarted=True,
        enabled=True,
        _if=lambda: (config.did_change() or token.did_change()) and not install.did_change(),
        _sudo=True,
    )


def server(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name != SERVER:
        return
    _k3s_node(lab, "server", "k3s")
    k3s.api_ready(name="k3s server: API ready", timeout=lab.timeout_k3s_ready, _sudo=True)


def agents(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name not in AGENTS:
        return
    _k3s_node(lab, "agent", "k3s-agent")


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

    bird_conf = tools.rendered_file(
        name="host1: BIRD configuration",
        dest=BIRD_CONFIG_PATH,
        content=render_bird_conf(lab),
        mode="0644",
        _sudo=True,
    )
    systemd.service(name="host1: BIRD running", service="bird", running=True, enabled=True, _sudo=True)
    systemd.service(
        name="host1: restart BIRD (configuration changed)",
        service="bird",
        running=True,
        restarted=True,
        _if=bird_conf.did_change,
        _sudo=True,
    )

    tools.binary(
        name=f"host1: kubectl {lab.kubectl_version}",
        tool="kubectl",
        url=lab.kubectl_url,
        sha256_url=lab.kubectl_sha256_url,
        dest=KUBECTL_PATH,
        version=lab.kubectl_version,
        _sudo=True,
    )
    tools.binary(
        name=f"host1: calicoctl {lab.calicoctl_version}",
        tool="calicoctl",
        url=lab.calicoctl_url,
        sha256_url=lab.calicoctl_sha256_url,
        dest=CALICOCTL_PATH,
        version=lab.calicoctl_version,
        _sudo=True,
    )

    k3s.kubeconfig_installed(
        name="host1: admin kubeconfig for ubuntu",
        lab=lab,
        path=HOST1_KUBECONFIG_PATH,
        user="ubuntu",
        _sudo=True,
    )
    tools.rendered_file(
        name="host1: shell profile (KUBECONFIG, DATASTORE_TYPE, calicoctl alias)",
        dest=tools.PROFILE_PATH,
        content=render_profile(lab),
        mode="0644",
        _sudo=True,
    )
