"""Rendering of every file the lab needs, from the Jinja templates in the checkout's ``templates/``
(``lab.templates_dir``).

Values reach the templates as data and are written with the ``q`` filter (a JSON scalar,
which is valid YAML and can never break out of its field), ``to_yaml`` for whole structures,
``shquote`` in shell, and ``bird`` in BIRD's configuration (which has no quoted form for addresses,
prefixes, numbers and names: each value must parse as the kind the place needs, or rendering stops).
Rendering is deterministic: the same lab gives the same bytes.

Example:

.. code:: python

    from calicolab.model import load_defaults, load_lab
    files = render_all(load_lab(load_defaults()))
    files["cloud-init/control.yaml"].startswith("#cloud-config")
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from calicolab import constants
from calicolab.kube.pools import pool_name
from calicolab.model import Lab

MANIFESTS = ("tigera-operator", "apiserver", "installation", "yaobank")


def quote(value: Any) -> str:
    """A scalar as a JSON literal: valid YAML whatever the value contains."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv4Address, Path)):
        value = str(value)
    return json.dumps(value, ensure_ascii=False)


#: BIRD 2 symbol names (protocols, filters): a letter or underscore, then letters, digits, underscores.
_BIRD_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def bird(value: Any, kind: str) -> str:
    """A value as a BIRD 2 literal of ``kind`` (address, prefix, number, symbol); ValueError otherwise.

    Example: ``bird("198.19.32.0/20", "prefix")`` -> ``"198.19.32.0/20"``; ``bird("a b", "symbol")`` raises.
    """
    text = str(value)
    try:
        if kind == "address":
            return str(ipaddress.IPv4Address(text))
        if kind == "prefix":
            return str(ipaddress.IPv4Network(text))
        if kind == "number" and not isinstance(value, bool) and 0 <= int(value) <= 2**32 - 1:
            return str(int(value))
    except (TypeError, ValueError):
        pass
    if kind == "symbol" and _BIRD_SYMBOL.fullmatch(text):
        return text
    raise ValueError(f"{value!r} is not a BIRD {kind}; it cannot be written into bird.conf")


def to_yaml(value: Any, indent: int = 0) -> str:
    """A structure as block YAML, indented by ``indent`` spaces after the first line."""
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, width=4096).rstrip("\n")
    return text.replace("\n", "\n" + " " * indent)


@lru_cache(maxsize=4)
def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = quote
    env.filters["to_yaml"] = to_yaml
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    env.filters["bird"] = bird
    env.filters["pool_name"] = pool_name
    # Static files of our own (scripts) embedded verbatim; they carry no values.
    env.globals["lookup_file"] = lambda relative: (templates_dir / relative).read_text().rstrip("\n")
    return env


def _render(lab: Lab, template: str, **context: Any) -> str:
    context = {"lab": lab, "vms": list(lab.vms.values()), "paths": constants, **context}
    return _environment(lab.templates_dir).get_template(template).render(**context)


def cluster_dns(lab: Lab) -> str:
    """The cluster DNS address: the 10th address of the service CIDR, as k3s' default does."""
    return str(lab.service_cidr.network_address + 10)


def _cloud_init(lab: Lab, name: str, fingerprint: str | None) -> str:
    vm = lab.vms[name]
    network = {
        "addresses": [f"{vm.lab_ip}/{lab.lab_prefix}", f"{vm.mgmt_ip}/{lab.mgmt_prefix}"],
    }
    return _render(lab, "cloud-init/user-data.yaml.j2", vm=vm, network=network, fingerprint=fingerprint)


def cloud_init_fingerprint(lab: Lab, name: str) -> str:
    """sha256 (hex) of one VM's user-data rendered WITHOUT its fingerprint entry.

    ``render_cloud_init`` writes this value to ``USER_DATA_FINGERPRINT_PATH`` in the VM, so a VM
    tells which settings it was built from, whatever Multipass added to the user-data on its way.

    Example: ``cloud_init_fingerprint(lab, "node1")`` -> ``"3f1c…"`` (64 hex digits)
    """
    return hashlib.sha256(_cloud_init(lab, name, None).encode("utf-8")).hexdigest()


def render_cloud_init(lab: Lab, name: str) -> str:
    """The cloud-init user-data for one VM: the shared base plus its role's part, and its fingerprint."""
    return _cloud_init(lab, name, cloud_init_fingerprint(lab, name))


def render_k3s_config(lab: Lab, name: str) -> str:
    """``/etc/rancher/k3s/config.yaml`` for the server (control) or an agent (node1, node2)."""
    vm = lab.vms[name]
    if vm.role == "server":
        return _render(lab, "k3s/server-config.yaml.j2", vm=vm, cluster_dns=cluster_dns(lab))
    if vm.role == "agent":
        return _render(lab, "k3s/agent-config.yaml.j2", vm=vm)
    raise ValueError(f"{name} is not part of the k3s cluster")


def render_bird_conf(lab: Lab) -> str:
    """BIRD 2 configuration for host1: iBGP with the three cluster nodes, the course's import filter."""
    return _render(lab, "bird/bird.conf.j2")


def render_profile(lab: Lab) -> str:
    """host1's ``/etc/profile.d/calicolab.sh``: kubeconfig, calicoctl's datastore and alias."""
    return _render(lab, "host1/profile.sh.j2")


def render_manifest(lab: Lab, which: str) -> str:
    """A multi-document Kubernetes manifest: one of ``MANIFESTS``."""
    if which not in MANIFESTS:
        raise ValueError(f"unknown manifest {which!r}; choose one of {', '.join(MANIFESTS)}")
    return _render(lab, f"{'calico' if which != 'yaobank' else 'yaobank'}/{which}.yaml.j2")


def render_all(lab: Lab) -> dict[str, str]:
    """Every rendered file, keyed by its path relative to an output folder."""
    files: dict[str, str] = {}
    for name in lab.vms:
        files[f"cloud-init/{name}.yaml"] = render_cloud_init(lab, name)
    for vm in (lab.server, *lab.agents):
        files[f"k3s/{vm.name}-config.yaml"] = render_k3s_config(lab, vm.name)
    files["bird/bird.conf"] = render_bird_conf(lab)
    files["host1/profile.sh"] = render_profile(lab)
    for which in MANIFESTS:
        if which == "apiserver" and lab.calico_apiserver != "Enabled":
            continue  # the lab runs without the Calico API server
        files[f"manifests/{which}.yaml"] = render_manifest(lab, which)
    return files
