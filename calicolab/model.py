"""The lab model: settings from ``group_data/``, converted and validated in one pass.

A :class:`Lab` has one typed field per setting of ``group_data/all.py``; it validates itself when it
is made (``load_lab``, or ``dataclasses.replace`` of a valid lab), and cannot be changed afterwards.
Every problem found is collected, so the user sees one error that lists all of them, each naming the
field and what would be valid, before anything is rendered or touched.

The project folder (the checkout, holding ``group_data/`` and ``templates/``) is the folder the
command runs in, whichever way the package was installed.

Example:

.. code:: python

    lab = load_lab(load_defaults() | {"calico_version": "v3.31.7"})
    lab.vms["control"].lab_ip   # "198.19.0.1"
    dataclasses.replace(lab, tcp_mss=1200)   # validated again
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import runpy
import string
import urllib.parse
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from pyinfra.api.exceptions import PyinfraError

from calicolab.constants import AGENTS, CLIENT, SERVER, VM_NAMES
from calicolab.state import marker_problem

#: Where the settings live, relative to the project folder (the checkout).
GROUP_DATA_ALL = Path("group_data") / "all.py"
TEMPLATES = Path("templates")

ENCAPSULATIONS = ("None", "IPIP", "IPIPCrossSubnet", "VXLAN", "VXLANCrossSubnet")
ENABLED_DISABLED = ("Enabled", "Disabled")
ROLES = {SERVER: "server", **{name: "agent" for name in AGENTS}, CLIENT: "client"}

_K3S_VERSION = re.compile(r"^v\d+\.\d+\.\d+\+k3s\d+$")
_SEMVER = re.compile(r"^v\d+\.\d+\.\d+$")
# Container image references, as the distribution project's reference grammar defines them
# (distribution/reference `regexp.go`): an optional registry host, lowercase path components, then a
# tag and/or a digest. Matched whole (fullmatch), so a trailing newline or a capital letter fails.
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# A first component is a registry host only when it has a dot or a port, or is localhost.
_IMAGE_HOST = r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9-]+(?=:))(?::\d+)?/"
_IMAGE_TAG = r":[\w][\w.-]{0,127}"
_IMAGE_DIGEST = r"@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE_NAME = rf"(?:{_IMAGE_HOST})?{_IMAGE_PATH}(?:/{_IMAGE_PATH})*"
#: With a tag or a digest (the operator image), and with both optional (YaoBank's images).
_IMAGE = re.compile(rf"{_IMAGE_NAME}(?:{_IMAGE_TAG}(?:{_IMAGE_DIGEST})?|{_IMAGE_DIGEST})")
_IMAGE_ANY = re.compile(rf"{_IMAGE_NAME}(?:{_IMAGE_TAG})?(?:{_IMAGE_DIGEST})?")
_UBUNTU_IMAGE = re.compile(r"\d{2}\.(?:04|10)|[a-z]+")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMG])?(?:i?B)?", re.IGNORECASE)
_SIZE_FACTORS = {None: 1, "K": 1024, "M": 1024**2, "G": 1024**3}
#: The only placeholders a download URL may use.
URL_FIELDS = ("version", "arch")
# Longest state_dir accepted: macOS' PATH_MAX is 1024 and the folder's files need room below it.
STATE_DIR_MAX = 900

# The tigera-operator release that ships with each Calico release (Calico's release manifests).
OPERATOR_FOR_CALICO = {
    "v3.30.0": "v1.38.0", "v3.30.7": "v1.38.13",
    "v3.31.0": "v1.40.0", "v3.31.7": "v1.40.15",
    "v3.32.0": "v1.42.0", "v3.32.1": "v1.42.3",
}
OPERATOR_REGISTRY = "quay.io/tigera/operator"
# Kubernetes minor versions each Calico minor is tested on (Calico's system requirements).
KUBERNETES_FOR_CALICO = {"3.30": (31, 35), "3.31": (32, 35), "3.32": (34, 36)}

# Host data the @multipass connector sets itself (not a setting of group_data).
HOST_KEYS = {"multipass_instance"}


class LabConfigError(ValueError):
    """Invalid lab settings; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid lab settings ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class VM:
    name: str
    role: str  # "server" | "agent" | "client"
    lab_ip: str
    mgmt_ip: str
    cpus: int
    memory: str
    disk: str

    @property
    def memory_bytes(self) -> int:
        return _size_bytes(self.memory)


class _Missing:
    """Stands for a setting that was not given (falsy, so an optional setting reads as empty)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Lab:
    """Validated settings: one field per setting of ``group_data/all.py``, with its converted value.

    Made by :func:`load_lab`; ``dataclasses.replace(lab, key=value)`` makes a new lab and validates
    it again. ``vms``, the two networks and ``state_path`` are derived from the settings.

    Example: ``load_lab(load_defaults()).k3s_api_port`` -> ``6443``
    """

    # Virtual machines (Multipass)
    ubuntu_image: str
    vm_cpus: Mapping[str, int]
    vm_memory: Mapping[str, str]
    vm_disk: Mapping[str, str]
    multipass_bin: str
    multipass_exec_timeout: int
    # Addresses
    lab_prefix: int
    mgmt_prefix: int
    lab_ips: Mapping[str, str]
    mgmt_ips: Mapping[str, str]
    tcp_mss: int
    # k3s
    k3s_version: str
    cluster_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    k3s_api_port: int
    k3s_install_url: str
    k3s_release_url: str
    # Calico (tigera-operator)
    calico_version: str
    tigera_operator_image: str
    calico_pool_cidr: ipaddress.IPv4Network
    calico_pool_block_size: int
    calico_pool_nat_outgoing: str
    calico_pool_encapsulation: str
    calico_container_ip_forwarding: str
    calico_apiserver: str
    external_pool_cidr: ipaddress.IPv4Network
    service_external_cidr: ipaddress.IPv4Network
    # Tools on host1
    kubectl_version: str
    calicoctl_version: str
    kubectl_url: str
    kubectl_sha256_url: str
    calicoctl_url: str
    calicoctl_sha256_url: str
    # BGP on host1
    bgp_as_number: int
    # YaoBank
    yaobank_namespace: str
    yaobank_images: Mapping[str, str]
    yaobank_summary_replicas: int
    yaobank_node_port: int
    # Waits (seconds)
    timeout_cloud_init: int
    timeout_k3s_ready: int
    timeout_operator_ready: int
    timeout_calico_available: int
    timeout_nodes_ready: int
    timeout_rollout: int
    timeout_app_answer: int
    # Local state on the workstation
    state_dir: str
    #: The checkout: group_data/ and templates/ are read from here, a relative state_dir is inside it.
    project_dir: Path = field(default_factory=Path.cwd)
    # Derived from the settings above when the lab is made.
    vms: Mapping[str, VM] = field(init=False)
    state_path: Path = field(init=False)
    lab_network: ipaddress.IPv4Network = field(init=False, repr=False)
    mgmt_network: ipaddress.IPv4Network = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for key, value in _validate(self.settings, self.project_dir).items():
            object.__setattr__(self, key, value)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings as ``group_data/all.py`` names them (a copy: changing it changes no lab)."""
        return {name: dict(value) if isinstance(value, Mapping) else value
                for name, value in ((name, getattr(self, name)) for name in SETTINGS)}

    @property
    def templates_dir(self) -> Path:
        return self.project_dir / TEMPLATES

    @property
    def server(self) -> VM:
        return self.vms[SERVER]

    @property
    def agents(self) -> list[VM]:
        return [self.vms[name] for name in AGENTS]

    @property
    def client(self) -> VM:
        return self.vms[CLIENT]

    @property
    def api_url(self) -> str:
        return f"https://{self.server.lab_ip}:{self.k3s_api_port}"


#: The setting names: every field of ``Lab`` that is given, not derived (the project folder is no setting).
SETTINGS = tuple(item.name for item in fields(Lab) if item.init and item.name != "project_dir")


def load_defaults(project_dir: Path | None = None) -> dict[str, Any]:
    """The settings of the checkout's ``group_data/all.py`` as a dict (public names only).

    Example: ``load_defaults()["k3s_api_port"]`` -> ``6443`` (run from the checkout)
    """
    path = (project_dir or Path.cwd()) / GROUP_DATA_ALL
    if not path.is_file():
        raise LabConfigError([f"{GROUP_DATA_ALL}: not found in {path.parent.parent}; run from the calicolab checkout"])
    namespace = runpy.run_path(str(path))
    return {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not callable(value) and not isinstance(value, type(re))
    }


class _Checker:
    """Collects problems while converting raw values."""

    def __init__(self, data: Mapping[str, Any]):
        self.data = data
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def given(self, key: str) -> bool:
        return self.data.get(key, MISSING) is not MISSING

    def get(self, key: str) -> Any:
        if not self.given(key):
            self.problem(key, "missing (it belongs in group_data/all.py)")
            return None
        return self.data[key]

    def convert(self, key: str, convert: Callable[[Any], Any], hint: str) -> Any:
        value = self.get(key)
        if not self.given(key):
            return None
        try:
            return convert(value)
        except (TypeError, ValueError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            self.problem(key, f"{value!r} is not valid{detail}; expected {hint}")
            return None

    def integer(self, key: str, low: int, high: int) -> int | None:
        def convert(value: Any) -> int:
            if isinstance(value, bool):
                raise ValueError("")
            number = int(str(value).strip())
            if not low <= number <= high:
                raise ValueError("out of range")
            return number

        return self.convert(key, convert, f"a whole number from {low} to {high}")

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        def convert(value: Any) -> str:
            if value not in choices:
                raise ValueError("")
            return value

        return self.convert(key, convert, "one of " + ", ".join(choices) + " (case-sensitive)")

    def pattern(self, key: str, regex: re.Pattern, hint: str) -> str | None:
        def convert(value: Any) -> str:
            if not isinstance(value, str) or not regex.fullmatch(value):
                raise ValueError("")
            return value

        return self.convert(key, convert, hint)

    def network(self, key: str) -> ipaddress.IPv4Network | None:
        def convert(value: Any) -> ipaddress.IPv4Network:
            return ipaddress.IPv4Network(str(value), strict=True)

        return self.convert(key, convert, "an IPv4 network in CIDR form with no host bits, e.g. 198.19.16.0/20")

    def per_vm(self, key: str) -> dict[str, Any]:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(key, f"{value!r} is not valid; expected a mapping of {', '.join(VM_NAMES)} to values")
            return {}
        missing = [name for name in VM_NAMES if name not in value]
        extra = [name for name in value if name not in VM_NAMES]
        if missing:
            self.problem(key, f"no value for {', '.join(missing)}; give one for each of {', '.join(VM_NAMES)}")
        if extra:
            self.problem(key, f"unknown VM(s) {', '.join(map(str, extra))}; the lab's VMs are {', '.join(VM_NAMES)}")
        return dict(value)


def _operator_image(check: _Checker, calico_version: str | None) -> str | None:
    """The pinned operator image, or the one that ships with ``calico_version``."""
    if check.data.get("tigera_operator_image"):
        return check.pattern("tigera_operator_image", _IMAGE, "an image reference with a tag, e.g. quay.io/tigera/operator:v1.42.3")
    if calico_version is None:
        return None
    if calico_version not in OPERATOR_FOR_CALICO:
        check.problem(
            "tigera_operator_image",
            f"calicolab does not know which operator ships with calico_version {calico_version} "
            f"(known: {', '.join(OPERATOR_FOR_CALICO)}); set tigera_operator_image=quay.io/tigera/operator:vX.Y.Z "
            "from that release's tigera-operator.yaml",
        )
        return None
    return f"{OPERATOR_REGISTRY}:{OPERATOR_FOR_CALICO[calico_version]}"


def _check_versions(check: _Checker, s: dict[str, Any]) -> None:
    """Calico must support the Kubernetes minor that the pinned k3s runs."""
    calico, k3s = s.get("calico_version"), s.get("k3s_version")
    if not calico or not k3s:
        return
    calico_minor = ".".join(calico[1:].split(".")[:2])
    kube_minor = int(k3s[1:].split(".")[1])
    supported = KUBERNETES_FOR_CALICO.get(calico_minor)
    if supported is None:
        check.problem("calico_version", f"{calico} is not a release calicolab supports; use one of Calico {', '.join(KUBERNETES_FOR_CALICO)} (e.g. v3.32.1)")
    elif not supported[0] <= kube_minor <= supported[1]:
        check.problem(
            "k3s_version",
            f"{k3s} runs Kubernetes 1.{kube_minor}, but Calico {calico_minor} supports 1.{supported[0]} to 1.{supported[1]}; "
            f"choose a k3s release in that range or another calico_version",
        )


def _ubuntu_image(value: Any) -> str:
    """A Multipass image alias. pyinfra's ``--data ubuntu_image=24.04`` arrives as the float 24.04
    (its CLI parses values as JSON); Ubuntu versions are YY.MM with a two-digit month, so two decimals
    give the text back exactly (22.10 -> 22.1 -> "22.10")."""
    if isinstance(value, float):
        value = f"{value:.2f}"
    if not isinstance(value, str) or not _UBUNTU_IMAGE.fullmatch(value):
        raise ValueError("")
    return value


def _download_url(value: Any) -> str:
    """An https:// URL whose only placeholders are ``{version}`` and ``{arch}``."""
    if not isinstance(value, str) or not re.fullmatch(r"[^\s'\"`$\\]+", value):
        raise ValueError("")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("downloads must use https://")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError:
        raise ValueError("unbalanced { or }") from None
    unknown = sorted(fields - set(URL_FIELDS))
    if unknown:
        raise ValueError("unknown placeholder " + ", ".join("{" + name + "}" for name in unknown))
    return value


def _kubernetes_version(k3s_version: str | None) -> str | None:
    """``v1.35.4+k3s1`` -> ``v1.35.4``: the Kubernetes release a k3s release is built from."""
    return k3s_version.split("+", 1)[0] if k3s_version else None


def _minor(version: str | None) -> tuple[int, int] | None:
    match = re.match(r"v(\d+)\.(\d+)\.", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check_tool_skew(check: _Checker, s: dict[str, Any]) -> None:
    """host1's kubectl within one minor of k3s' Kubernetes (Kubernetes' version skew policy), and
    calicoctl the same minor as Calico (calicoctl refuses a mismatched cluster)."""
    kubectl, kube = _minor(s.get("kubectl_version")), _minor(s.get("k3s_version"))
    if kubectl and kube and (kubectl[0] != kube[0] or abs(kubectl[1] - kube[1]) > 1):
        check.problem(
            "kubectl_version",
            f"{s['kubectl_version']} is more than one minor away from Kubernetes {kube[0]}.{kube[1]} "
            f"(k3s_version {s['k3s_version']}); use v{kube[0]}.{kube[1] - 1} to v{kube[0]}.{kube[1] + 1}, "
            f"e.g. v{kube[0]}.{kube[1]}.0",
        )
    calicoctl, calico = _minor(s.get("calicoctl_version")), _minor(s.get("calico_version"))
    if calicoctl and calico and calicoctl != calico:
        check.problem(
            "calicoctl_version",
            f"{s['calicoctl_version']} is not Calico {calico[0]}.{calico[1]} (calico_version {s['calico_version']}); "
            f"use the same minor, e.g. {s['calico_version']}",
        )


def _state_path(check: _Checker, state_dir: str | None, project_dir: Path) -> Path | None:
    """The absolute state folder, refused when it is a place teardown must never remove."""
    if state_dir is None:
        return None
    path = Path(os.path.expanduser(state_dir))
    if not path.is_absolute():
        path = project_dir / path
    if len(str(path)) > STATE_DIR_MAX or any(len(part.encode()) > 255 for part in path.parts):
        check.problem("state_dir", f"{state_dir!r} is too long (at most {STATE_DIR_MAX} characters, 255 per folder name); use a shorter path such as .calicolab")
        return None
    path = Path(os.path.abspath(path))
    resolved = path.resolve()
    protected = {Path(path.anchor): "/", Path.home().resolve(): "your home folder", project_dir.resolve(): "the calicolab checkout"}
    for place, label in protected.items():
        if resolved == place or resolved in place.parents:
            check.problem("state_dir", f"{state_dir!r} is {label if resolved == place else 'a folder that contains ' + label}; calicolab removes its state folder on teardown, so give a folder of its own such as .calicolab")
            return None
    problem = marker_problem(path)
    if problem:
        check.problem("state_dir", problem)
        return None
    return resolved


def _size_bytes(value: Any) -> int:
    match = _SIZE.fullmatch(str(value).strip())
    if not match:
        raise ValueError("")
    return int(float(match.group(1)) * _SIZE_FACTORS[(match.group(2) or "").upper() or None])


def _check_vms(check: _Checker) -> tuple[dict[str, VM], dict[str, dict[str, Any]]]:
    """The VMs whose every value is valid, and each VM's values that parsed (for the network checks)."""
    lab_ips = check.per_vm("lab_ips")
    mgmt_ips = check.per_vm("mgmt_ips")
    cpus = check.per_vm("vm_cpus")
    memory = check.per_vm("vm_memory")
    disk = check.per_vm("vm_disk")

    parsed: dict[str, dict[str, Any]] = {name: {} for name in VM_NAMES}
    for key, ips in (("lab_ips", lab_ips), ("mgmt_ips", mgmt_ips)):
        for name, value in ips.items():
            if name not in parsed:
                continue
            try:
                address = ipaddress.IPv4Address(str(value))
            except ValueError:
                check.problem(f"{key}.{name}", f"{value!r} is not an IPv4 address, e.g. 198.19.0.1")
                continue
            parsed[name][key] = address
        seen: dict[ipaddress.IPv4Address, str] = {}
        for name in VM_NAMES:
            address = parsed[name].get(key)
            if address is None:
                continue
            if address in seen:
                check.problem(f"{key}.{name}", f"{address} is already used by {seen[address]}; every VM needs its own address")
            seen[address] = name

    for name in VM_NAMES:
        if name not in cpus:
            continue
        value = cpus[name]
        if isinstance(value, bool) or not str(value).isdigit() or not 1 <= int(value) <= 64:
            check.problem(f"vm_cpus.{name}", f"{value!r} is not valid; expected a whole number of CPUs from 1 to 64")
        else:
            parsed[name]["cpus"] = int(value)
    # Minimums are Multipass' own (512M memory, 1G disk on current releases); the maximums are far
    # beyond any workstation, so a value above them is a typo (2048G for 2048M).
    for key, values, minimum, minimum_text, maximum, maximum_text in (
        ("vm_memory", memory, 512 * 1024**2, "512M", 256 * 1024**3, "256G"),
        ("vm_disk", disk, 1024**3, "1G", 4096 * 1024**3, "4096G"),
    ):
        for name in VM_NAMES:
            if name not in values:
                continue
            value = values[name]
            try:
                size = _size_bytes(value)
            except ValueError:
                check.problem(f"{key}.{name}", f"{value!r} is not a size; write it like Multipass does, e.g. 2G or 2048M")
                continue
            if size < minimum:
                check.problem(f"{key}.{name}", f"{value!r} is too small; at least {minimum_text}")
                continue
            if size > maximum:
                check.problem(f"{key}.{name}", f"{value!r} is more than any workstation has; at most {maximum_text} (did you mean M instead of G?)")
                continue
            parsed[name][key] = str(value).strip()

    vms = {}
    for name in VM_NAMES:
        values = parsed[name]
        if {"lab_ips", "mgmt_ips", "cpus", "vm_memory", "vm_disk"} <= values.keys():
            vms[name] = VM(
                name=name,
                role=ROLES[name],
                lab_ip=str(values["lab_ips"]),
                mgmt_ip=str(values["mgmt_ips"]),
                cpus=values["cpus"],
                memory=values["vm_memory"],
                disk=values["vm_disk"],
            )
    return vms, parsed


def _addresses(parsed: dict[str, dict[str, Any]], key: str) -> dict[str, ipaddress.IPv4Address]:
    """The addresses of ``lab_ips``/``mgmt_ips`` that ``_check_vms`` parsed, in VM order (it reported the bad ones)."""
    return {name: values[key] for name, values in parsed.items() if key in values}


def _common_network(check: _Checker, key: str, addresses: dict, prefix: int | None, example: str):
    if prefix is None or SERVER not in addresses:
        return None
    network = ipaddress.IPv4Interface(f"{addresses[SERVER]}/{prefix}").network
    for name, address in addresses.items():
        if address not in network:
            check.problem(f"{key}.{name}", f"{address} is outside {network}, the /{prefix} network of {SERVER}; put all four in one network such as {example}")
        elif address in (network.network_address, network.broadcast_address):
            check.problem(f"{key}.{name}", f"{address} is the network or broadcast address of {network}")
    return network


def _check_networks(check: _Checker, settings: dict[str, Any], parsed: dict[str, dict[str, Any]]):
    lab_network = _common_network(check, "lab_ips", _addresses(parsed, "lab_ips"), settings.get("lab_prefix"),
                                  "198.19.0.0/20")
    mgmt_network = _common_network(check, "mgmt_ips", _addresses(parsed, "mgmt_ips"), settings.get("mgmt_prefix"),
                                   "10.255.255.0/24")

    cluster = settings.get("cluster_cidr")
    service = settings.get("service_cidr")
    pool = settings.get("calico_pool_cidr")
    block = settings.get("calico_pool_block_size")
    if pool is not None and cluster is not None and not pool.subnet_of(cluster):
        check.problem("calico_pool_cidr", f"{pool} is not inside cluster_cidr {cluster}; choose a pool inside it, e.g. {next(cluster.subnets(new_prefix=min(cluster.prefixlen + 1, 32)))}")
    if pool is not None and block is not None and block < pool.prefixlen:
        check.problem("calico_pool_block_size", f"/{block} blocks are larger than the pool {pool}; use a block size from {pool.prefixlen} to 32")
    named = [("lab network", "lab_ips", lab_network), ("management network", "mgmt_ips", mgmt_network),
             ("cluster_cidr", "cluster_cidr", cluster), ("service_cidr", "service_cidr", service),
             ("service_external_cidr", "service_external_cidr", settings.get("service_external_cidr"))]
    external_pool = settings.get("external_pool_cidr")
    if external_pool is not None and cluster is not None and not external_pool.subnet_of(cluster):
        check.problem("external_pool_cidr", f"{external_pool} is not inside cluster_cidr {cluster}")
    if external_pool is not None and pool is not None and external_pool.overlaps(pool):
        check.problem("external_pool_cidr", f"{external_pool} overlaps calico_pool_cidr {pool}; the two pools must be disjoint")
    for i, (label_a, key_a, net_a) in enumerate(named):
        for label_b, key_b, net_b in named[i + 1:]:
            if net_a is not None and net_b is not None and net_a.overlaps(net_b):
                check.problem(key_b, f"{label_b} {net_b} overlaps the {label_a} {net_a}; the lab network, management network, cluster_cidr and service_cidr must not overlap")
    return lab_network, mgmt_network


def _containing(key: str, known: set[str]) -> list[str]:
    """Settings whose name contains ``key`` once case and underscores are ignored (natOutgoing)."""
    bare = key.replace("_", "").replace("-", "").lower()
    return sorted(name for name in known if len(bare) >= 4 and bare in name.replace("_", "").lower())[:1]


def _check_unknown_keys(check: _Checker, data: Mapping[str, Any], known: set[str]) -> None:
    """Refuse settings calicolab does not have: pyinfra would accept ``--data natOutgoing=Disabled``
    silently and change nothing."""
    for key in data:
        if key in known or key in HOST_KEYS or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6) or _containing(key, known)
        if close:
            check.problem(key, f"unknown setting; did you mean {close[0]!r}?")
        else:
            check.problem(key, "unknown setting; every setting calicolab has is listed in group_data/all.py")


def _check_project(check: _Checker, project_dir: Path) -> None:
    """The project folder must be the checkout: the templates are read from it."""
    if not (project_dir / TEMPLATES).is_dir() or not (project_dir / GROUP_DATA_ALL).is_file():
        check.problem("project_dir", f"{project_dir} has no {TEMPLATES}/ and {GROUP_DATA_ALL}; run from the calicolab checkout")


def _validate(data: Mapping[str, Any], project_dir: Path) -> dict[str, Any]:
    """Every field of a ``Lab`` (converted settings, then derived values) from raw ``data``;
    raise ``LabConfigError`` listing every problem."""
    check = _Checker(data)
    s: dict[str, Any] = {}
    _check_project(check, project_dir)

    s["ubuntu_image"] = check.convert("ubuntu_image", _ubuntu_image, "a Multipass image alias such as 24.04, 22.04 or noble")
    s["multipass_bin"] = check.pattern("multipass_bin", re.compile(r"^[\w./+-]+$"), "a command name or path, e.g. multipass or /snap/bin/multipass")
    s["multipass_exec_timeout"] = check.integer("multipass_exec_timeout", 10, 86400)
    s["lab_prefix"] = check.integer("lab_prefix", 8, 29)
    s["mgmt_prefix"] = check.integer("mgmt_prefix", 8, 29)
    s["tcp_mss"] = check.integer("tcp_mss", 536, 1460)
    s["k3s_version"] = check.pattern("k3s_version", _K3S_VERSION, "a k3s release such as v1.35.4+k3s1")
    s["cluster_cidr"] = check.network("cluster_cidr")
    s["service_cidr"] = check.network("service_cidr")
    s["k3s_api_port"] = check.integer("k3s_api_port", 1, 65535)
    s["calico_version"] = check.pattern("calico_version", _SEMVER, "a Calico release such as v3.32.1")
    s["tigera_operator_image"] = _operator_image(check, s["calico_version"])
    s["calico_pool_cidr"] = check.network("calico_pool_cidr")
    s["external_pool_cidr"] = check.network("external_pool_cidr")
    s["service_external_cidr"] = check.network("service_external_cidr")
    s["calico_pool_block_size"] = check.integer("calico_pool_block_size", 20, 32)
    s["calico_pool_nat_outgoing"] = check.choice("calico_pool_nat_outgoing", ENABLED_DISABLED)
    s["calico_pool_encapsulation"] = check.choice("calico_pool_encapsulation", ENCAPSULATIONS)
    s["calico_container_ip_forwarding"] = check.choice("calico_container_ip_forwarding", ENABLED_DISABLED)
    s["calico_apiserver"] = check.choice("calico_apiserver", ENABLED_DISABLED)
    # Empty: the release that matches the cluster (k3s' Kubernetes version, calico_version).
    s["kubectl_version"] = (check.pattern("kubectl_version", _SEMVER, "a Kubernetes release such as v1.35.4")
                            if check.data.get("kubectl_version", MISSING) else _kubernetes_version(s["k3s_version"]))
    s["calicoctl_version"] = (check.pattern("calicoctl_version", _SEMVER, "a Calico release such as v3.32.1")
                              if check.data.get("calicoctl_version", MISSING) else s["calico_version"])
    for key in ("k3s_install_url", "k3s_release_url", "kubectl_url", "kubectl_sha256_url", "calicoctl_url", "calicoctl_sha256_url"):
        s[key] = check.convert(key, _download_url, "an https:// URL without spaces or quotes, using only the placeholders {version} and {arch}")
    s["bgp_as_number"] = check.integer("bgp_as_number", 1, 4294967294)
    s["yaobank_namespace"] = check.pattern("yaobank_namespace", re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), "a Kubernetes namespace name (lowercase letters, digits and '-')")
    s["yaobank_summary_replicas"] = check.integer("yaobank_summary_replicas", 1, 20)
    s["yaobank_node_port"] = check.integer("yaobank_node_port", 30000, 32767)
    images = check.get("yaobank_images")
    if images is not None:
        if not isinstance(images, Mapping) or set(images) != {"customer", "summary", "database"}:
            check.problem("yaobank_images", f"{images!r} is not valid; expected a mapping with exactly customer, summary and database")
        else:
            for name, image in images.items():
                if not isinstance(image, str) or not _IMAGE_ANY.fullmatch(image):
                    check.problem(f"yaobank_images.{name}", f"{image!r} is not an image reference such as calico/yaobank-{name}:multiarch")
            s["yaobank_images"] = MappingProxyType(dict(images))
    for key in ("timeout_cloud_init", "timeout_k3s_ready", "timeout_operator_ready", "timeout_calico_available",
                "timeout_nodes_ready", "timeout_rollout", "timeout_app_answer"):
        s[key] = check.integer(key, 1, 86400)
    s["state_dir"] = check.pattern("state_dir", re.compile(r"[^\s'\"`$\\]+"), "a folder path without spaces or quotes, e.g. .calicolab")

    _check_versions(check, s)
    _check_tool_skew(check, s)
    vms, parsed = _check_vms(check)
    lab_network, mgmt_network = _check_networks(check, s, parsed)

    if check.problems:
        raise LabConfigError(check.problems)
    for key in ("lab_ips", "mgmt_ips", "vm_cpus", "vm_memory", "vm_disk"):
        s[key] = MappingProxyType(dict(data[key]))

    state_path = _state_path(check, s["state_dir"], project_dir)
    if check.problems:
        raise LabConfigError(check.problems)
    return s | {"vms": MappingProxyType(vms), "state_path": state_path.resolve(),
                "lab_network": lab_network, "mgmt_network": mgmt_network}


def load_lab(data: Mapping[str, Any], project_dir: Path | None = None) -> Lab:
    """The validated lab of ``data`` (group_data plus overrides); raise ``LabConfigError`` listing every problem.

    ``project_dir`` is the checkout (default: the current folder).

    Example: ``load_lab(load_defaults() | {"tcp_mss": 1200}).tcp_mss`` -> ``1200``
    """
    unknown = _Checker(data)
    _check_unknown_keys(unknown, data, set(SETTINGS))
    try:
        lab = Lab(**{key: data.get(key, MISSING) for key in SETTINGS}, project_dir=project_dir or Path.cwd())
    except LabConfigError as error:
        raise LabConfigError(error.problems + unknown.problems) from None
    if unknown.problems:
        raise LabConfigError(unknown.problems)
    return lab


_LAB_CACHE: dict[int, tuple[dict, Lab]] = {}


def lab_for_host(host) -> Lab:
    """The validated lab for a pyinfra host (from ``host.data``: group_data plus ``--data`` overrides)."""
    data = host.data.dict()
    cached = _LAB_CACHE.get(id(host))
    if cached and cached[0] == data:
        return cached[1]
    try:
        lab = load_lab(data)
    except LabConfigError as error:
        # A pyinfra error: the deploy file's loader reports it in one line, without a traceback.
        raise PyinfraError(str(error)) from None
    _LAB_CACHE[id(host)] = (data, lab)
    return lab
