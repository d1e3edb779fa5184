"""The lab's report card: the course's checkpoints as rows, decided from observations.

Everything here is pure: the operations in :mod:`calicolab.operations.checks` run the probes (a
shell script per VM, Kubernetes reads on the workstation) and hand the output to the functions
below, which return :class:`Row` objects. A row says pass or fail, what was observed, and on
failure the next thing to try (a command a student can paste on the workstation).

Rows are collected in one :class:`Report` per pyinfra run (kept on pyinfra's ``state``) and
printed once, as a plain-text table in course order, by :func:`render_table`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Iterable

from calicolab import multipass as mp
from calicolab.constants import AGENTS, CLIENT, SERVER
from calicolab.kube.apply import parse_manifest
from calicolab.kube.pools import ENCAPSULATION_MODES
from calicolab.kube.waits import by_name, condition, rollout_status

LAB_NAMES = ("control", "node1", "node2", "host1")
FTP_VMS = (SERVER, *AGENTS)
YAOBANK_TEXT = "Welcome to YAO Bank"
CALICO_NAMESPACE = "calico-system"
DEPLOY_COMMAND = "pyinfra inventory.py deploy.py -y"

# Course order: one section number per chapter, then a position inside it.
VMS, K3S, CALICO, APP, CLIENT_TOOLS = 10, 20, 30, 40, 50


@dataclass(frozen=True)
class Row:
    """One checkpoint. ``order`` sorts rows in course order; ``hint`` is shown only on failure.

    .. code:: python

        Row((10, 0, 0), "control: VM Running", True, "Running (10.1.2.3)")
    """

    order: tuple
    check: str
    ok: bool
    observed: str
    hint: str = ""


@dataclass
class Report:
    """The rows of one run (keyed by check name, so a repeated check replaces its row), and whether the
    table was printed already."""

    rows: dict[str, Row] = field(default_factory=dict)
    failed_steps: list[str] = field(default_factory=list)
    printed: bool = False

    def add(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.rows[row.check] = row

    def sorted_rows(self) -> list[Row]:
        return sorted(self.rows.values(), key=lambda row: (row.order, row.check))

    def failures(self) -> list[Row]:
        return [row for row in self.sorted_rows() if not row.ok]


def report_of(state) -> Report:
    """The run's :class:`Report`, created on first use and kept on pyinfra's ``state``."""
    if getattr(state, "calicolab_report", None) is None:
        state.calicolab_report = Report()
    return state.calicolab_report


# --- the table ----------------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def render_table(rows: list[Row], width: int = 100) -> str:
    """Rows as a plain-text table (no colour): ``PASS``/``FAIL``, check, observed value, and for a
    failure a ``try:`` line with the command to paste. Ends with a count line.

    .. code:: python

        render_table([Row((10,), "control: VM Running", True, "Running")])
    """
    name_width = max([len(row.check) for row in rows] + [5])
    lines = [f"{'RESULT':<6}  {'CHECK':<{name_width}}  OBSERVED", "-" * (6 + 2 + name_width + 2 + 8)]
    for row in rows:
        lines.append(f"{'PASS' if row.ok else 'FAIL':<6}  {row.check:<{name_width}}  {_clip(row.observed, width)}")
        if not row.ok and row.hint:
            lines.append(f"{'':<6}  {'':<{name_width}}  try: {row.hint}")
    failed = sum(1 for row in rows if not row.ok)
    lines.append("")
    lines.append(
        f"{len(rows) - failed} of {len(rows)} checks passed"
        + (f"; {failed} failed" if failed else ": the lab is the course's lab")
    )
    return "\n".join(lines)


# --- probes: one shell script per VM, its output cut into sections -------------------------------

_SECTION = "### calicolab:"


def sectioned_script(sections: dict[str, str], meanwhile: tuple[str, str] | None = None) -> str:
    """One shell script running each command with its output under a marker line; a failing
    command never stops the others. The sections run one after the other (several timed commands at
    once could starve each other on a busy VM and fail a check that would pass); ``meanwhile``, one
    ``(section, command)``, runs alongside them and its output comes last.

    .. code:: python

        sectioned_script({"addresses": "ip -4 -o addr show"}, meanwhile=("as_ubuntu", "sudo -u ubuntu id"))
    """
    parts = [f"echo {shlex.quote(_SECTION + name)}; {{ {command} ; }} 2>&1" for name, command in sections.items()]
    if meanwhile:
        name, command = meanwhile
        parts = ['meanwhile=$(mktemp)', f'{{ {command} ; }} >"$meanwhile" 2>&1 & pid=$!', *parts,
                 f'wait "$pid"; echo {shlex.quote(_SECTION + name)}; cat "$meanwhile"; rm -f "$meanwhile"']
    return "; ".join(parts) + "; true"


def add_sections(text: str, sections: dict[str, str]) -> str:
    """``text`` (a probe's output) with ``sections`` after it, as if the probe had printed them."""
    return text + "".join(f"\n{_SECTION}{name}\n{value}" for name, value in sections.items())


def split_sections(text: str) -> dict[str, str]:
    """The output of :func:`sectioned_script` as ``{section: text}``."""
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(_SECTION):
            current = line[len(_SECTION):].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return {name: value.strip() for name, value in sections.items()}


def mss_rule(mss: int) -> str:
    """The rule ``calicolab-mss-clamp`` adds (iptables arguments after the chain)."""
    return f"-p tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss {mss}"


def k3s_unit(name: str) -> str | None:
    return {SERVER: "k3s", **{agent: "k3s-agent" for agent in AGENTS}}.get(name)


def service_sections(name: str) -> dict[str, str]:
    """The probe's sections that are a systemd unit's ``ActiveState`` (what ``systemctl is-active``
    prints), and the unit: ``{"k3s": "k3s-agent"}`` on node1."""
    unit = k3s_unit(name)
    return {"k3s": unit} if unit else {"bird": "bird"} if name == CLIENT else {}


def vm_probe(lab, name: str, without: Iterable[str] = ()) -> str:
    """The root shell script that observes one VM (addresses, names, MSS rule, services, FTP; on host1
    also BIRD, the YaoBank page and, through :func:`client_command`, ubuntu's kubectl and calicoctl).
    ``without``: sections left out (the deploy's read of the VM has the units' states already)."""
    sections = {key: command for key, command in probe_sections(lab, name).items() if key not in without}
    if name == CLIENT:
        # ubuntu's kubectl and calicoctl wait on the API (the longest part): alongside the rest; their
        # own sections follow this one's marker
        return sectioned_script(sections, meanwhile=("as_ubuntu", client_command()))
    return sectioned_script(sections)


def probe_sections(lab, name: str) -> dict[str, str]:
    """The root commands of :func:`vm_probe`, by section name.

    Example: ``probe_sections(lab, "node1")["k3s"]`` -> ``"systemctl is-active k3s-agent"``
    """
    vm = lab.vms[name]
    names = " ".join(LAB_NAMES)
    sections = {
        "addresses": "ip -4 -o addr show scope global",
        # each name on a line of its own, then getent's answer (one process per name, parsed here)
        "names": f"for n in {names}; do echo \"$n\"; getent ahostsv4 \"$n\"; done",
        "mss": (
            "if command -v iptables >/dev/null; then "
            f"iptables -t mangle -C POSTROUTING {mss_rule(lab.tcp_mss)} && echo present || echo absent; "
            "else echo 'iptables is not installed'; fi"
        ),
    }
    for section, unit in service_sections(name).items():
        sections[section] = f"systemctl is-active {unit}"
    if name in FTP_VMS:
        # bash's /dev/tcp: read vsftpd's greeting without an FTP client
        sections["ftp"] = (
            f"timeout 5 bash -c 'exec 3<>/dev/tcp/{vm.lab_ip}/21 && head -n 1 <&3' || echo 'no answer on port 21'"
        )
    if name == CLIENT:
        url = yaobank_url(lab)
        sections["bird_conf"] = "grep -E '^[[:space:]]*neighbor' /etc/bird/bird.conf"
        sections["birdc"] = "birdc show protocols"
        sections["yaobank"] = f"curl -fsS --max-time 5 {shlex.quote(url)}"
    return sections


def client_command() -> str:
    """host1's user check: a script user ``ubuntu`` runs in a login shell (run with sudo; its profile
    sets KUBECONFIG etc.)."""
    probe = sectioned_script({
        "kubectl_version": "kubectl version --client -o json",
        "kubectl_nodes": "kubectl get nodes -o name --request-timeout=20s",
        "calicoctl_version": "timeout 20 calicoctl version",
        "calicoctl_pools": "calicoctl get ippools --allow-version-mismatch -o wide",
    })
    return f"sudo -u ubuntu -H bash -lc {shlex.quote(probe)}"


def yaobank_url(lab) -> str:
    return f"http://{lab.vms[SERVER].lab_ip}:{lab.yaobank_node_port}/"


def on_vm(lab, name: str, command: str) -> str:
    """A command to paste on the workstation that runs ``command`` in VM ``name`` (as ubuntu), with the
    configured Multipass client: ``on_vm(lab, "node1", "uptime")`` -> ``"multipass exec node1 -- uptime"``."""
    return f"{mp.typed_client(lab.multipass_bin)} exec {name} -- {command}"


def start_hint(lab, name: str) -> str:
    """The command that starts VM ``name``, with the configured Multipass client."""
    return f"{mp.typed_client(lab.multipass_bin)} start {name}"


def kubectl_hint(lab, args: str) -> str:
    """A kubectl command to paste on the workstation (runs on host1 with ubuntu's profile)."""
    return on_vm(lab, CLIENT, f"bash -lc {shlex.quote('kubectl ' + args)}")


# --- VM rows ------------------------------------------------------------------------------------


def _vm_order(lab, name: str, position: int, section: int = VMS) -> tuple:
    return (section, position, list(lab.vms).index(name) if name in lab.vms else 99)


def vm_state_rows(lab, instances: dict[str, dict] | None, error: str = "") -> list[Row]:
    """One row per lab VM from ``multipass list`` (``parse_list`` output): Running or not."""
    rows = []
    for name in lab.vms:
        order = _vm_order(lab, name, 0)
        check = f"{name}: VM Running"
        if instances is None:
            rows.append(Row(order, check, False, f"multipass list failed: {error}", "multipass version"))
            continue
        info = instances.get(name)
        if info is None:
            rows.append(Row(order, check, False, "does not exist", DEPLOY_COMMAND))
            continue
        state = info.get("state", "Unknown")
        addresses = ", ".join(info.get("ipv4") or []) or "no address"
        rows.append(Row(order, check, state == "Running", f"{state} ({addresses})", start_hint(lab, name)))
    return rows


def not_checked_rows(lab, name: str, why: str) -> list[Row]:
    """The per-VM rows of a VM that could not be looked into (its addresses, its k3s unit, host1's
    BIRD), failing with the reason."""
    rows = [address_row(lab, name, "")]
    if k3s_unit(name):
        rows.append(k3s_row(lab, name, ""))
    if name == CLIENT:
        rows.append(bird_row(lab, {}))
    return [replace(row, ok=False, observed=why, hint=start_hint(lab, name)) for row in rows]


def _addresses(text: str) -> list[ipaddress.IPv4Interface]:
    found = []
    for match in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)", text):
        found.append(ipaddress.IPv4Interface(match.group(1)))
    return found


def address_row(lab, name: str, text: str) -> Row:
    """Both static addresses (with their prefix) must be on the VM."""
    vm = lab.vms[name]
    want = [ipaddress.IPv4Interface(f"{vm.lab_ip}/{lab.lab_prefix}"), ipaddress.IPv4Interface(f"{vm.mgmt_ip}/{lab.mgmt_prefix}")]
    have = _addresses(text)
    missing = [str(w) for w in want if w not in have]
    observed = ", ".join(str(a) for a in have) or (text or "no IPv4 address")
    if missing:
        observed += f" (missing {', '.join(missing)})"
    return Row(_vm_order(lab, name, 1), f"{name}: lab and management addresses", not missing, observed,
               on_vm(lab, name, "sudo netplan apply"))


def names_row(lab, name: str, text: str) -> Row:
    """Every lab name must resolve, inside the VM, to (at least) its lab address."""
    resolved: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 1 and parts[0] in LAB_NAMES:
            current = resolved.setdefault(parts[0], [])
        elif parts and current is not None and parts[0] not in current:
            current.append(parts[0])  # "198.19.0.1  STREAM control": one line per address and socket type
    wrong = [n for n in LAB_NAMES if lab.vms[n].lab_ip not in resolved.get(n, [])]
    if wrong:
        observed = ", ".join(f"{n}={'/'.join(resolved.get(n) or ['nothing'])}" for n in wrong) + " (wrong)"
    else:
        observed = f"{', '.join(LAB_NAMES)} resolve to their lab addresses"
    return Row(_vm_order(lab, name, 2), f"{name}: lab names resolve to lab addresses", not wrong, observed,
               f"multipass restart {name}")


def mss_row(lab, name: str, text: str) -> Row:
    ok = text.strip().endswith("present")
    return Row(_vm_order(lab, name, 3), f"{name}: TCP MSS clamp {lab.tcp_mss}", ok,
               "rule present" if ok else _last_line(text, "no answer"),
               on_vm(lab, name, f"sudo /usr/local/sbin/calicolab-mss-clamp {lab.tcp_mss}"))


def ftp_row(lab, name: str, text: str) -> Row:
    ok = text.strip().startswith("220")
    return Row(_vm_order(lab, name, 4), f"{name}: vsftpd answers on port 21", ok, text.strip() or "no answer",
               on_vm(lab, name, "sudo systemctl restart vsftpd"))


def k3s_row(lab, name: str, text: str) -> Row:
    unit = k3s_unit(name)
    state = _last_line(text, "unknown")
    return Row(_vm_order(lab, name, 0, K3S), f"{name}: {unit} active", state == "active", state,
               on_vm(lab, name, f"sudo systemctl restart {unit}"))


def bird_row(lab, sections: dict[str, str]) -> Row:
    """BIRD active with a neighbor for each node; the BGP session states are shown, not required."""
    state = (sections.get("bird") or "unknown").splitlines()[-1]
    peers = re.findall(r"neighbor\s+(\d+\.\d+\.\d+\.\d+)", sections.get("bird_conf", ""))
    want = [lab.vms[n].lab_ip for n in (SERVER, *AGENTS)]
    missing = [ip for ip in want if ip not in peers]
    # birdc: "name  BGP  table  state  since  info" -> "name info" (Active, Established, ...)
    sessions = [
        f"{line.split()[0]} {line.split()[-1]}"
        for line in (sections.get("birdc") or "").splitlines()
        if re.search(r"\bBGP\b", line)
    ]
    observed = f"bird {state}; neighbors {', '.join(peers) or 'none'}"
    if missing:
        observed += f" (missing {', '.join(missing)})"
    observed += f"; sessions: {', '.join(sessions) or 'not shown'}"
    return Row((CLIENT_TOOLS, 9, 0), "host1: BIRD running, 3 peers configured", state == "active" and not missing,
               observed, on_vm(lab, CLIENT, "sudo systemctl restart bird"))


def yaobank_page_row(lab, text: str) -> Row:
    ok = YAOBANK_TEXT in text
    observed = f"answers with {YAOBANK_TEXT!r}" if ok else _last_line(text, "no answer")
    return Row((APP, 9, 0), f"host1: YaoBank page on {yaobank_url(lab)}", ok, observed,
               kubectl_hint(lab, f"-n {lab.yaobank_namespace} get pods,svc -o wide"))


def vm_rows(lab, name: str, sections: dict[str, str]) -> list[Row]:
    """Every row decided by a VM's own probe (see :func:`vm_probe`)."""
    rows = [
        address_row(lab, name, sections.get("addresses", "")),
        names_row(lab, name, sections.get("names", "")),
        mss_row(lab, name, sections.get("mss", "")),
    ]
    if "k3s" in sections:
        rows.append(k3s_row(lab, name, sections["k3s"]))
    if "ftp" in sections:
        rows.append(ftp_row(lab, name, sections["ftp"]))
    if name == CLIENT:
        rows += [bird_row(lab, sections), yaobank_page_row(lab, sections.get("yaobank", ""))]
    return rows


# --- host1's tools, as user ubuntu --------------------------------------------------------------


def _version(text: str, pattern: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None


def client_rows(lab, sections: dict[str, str]) -> list[Row]:
    """kubectl and calicoctl work for ubuntu with its profile, at the versions of the settings."""
    try:
        kubectl_version = (json.loads(sections.get("kubectl_version") or "{}").get("clientVersion") or {}).get("gitVersion")
    except ValueError:
        kubectl_version = _version(sections.get("kubectl_version", ""), r'gitVersion:?"?:?\s*"?(v[\w.+-]+)')
    nodes = re.findall(r"node/(\S+)", sections.get("kubectl_nodes", ""))
    want_nodes = [SERVER, *AGENTS]
    kubectl_ok = kubectl_version == lab.kubectl_version and sorted(nodes) == sorted(want_nodes)
    kubectl_seen = f"kubectl {kubectl_version or '?'} (want {lab.kubectl_version}); get nodes: " + (
        ", ".join(nodes) if nodes else _last_line(sections.get("kubectl_nodes")))
    calicoctl_version = _version(sections.get("calicoctl_version", ""), r"Client Version:\s*(v\S+)")
    pools = [line.split()[:2] for line in sections.get("calicoctl_pools", "").splitlines()[1:] if line.split()]
    pools_seen = ", ".join(" ".join(pool) for pool in pools) if pools else _last_line(sections.get("calicoctl_pools"))
    calicoctl_ok = calicoctl_version == lab.calicoctl_version and any(
        str(lab.calico_pool_cidr) in pool for pool in pools)
    return [
        Row((CLIENT_TOOLS, 0, 0), "host1: kubectl get nodes as ubuntu", kubectl_ok, kubectl_seen,
            on_vm(lab, CLIENT, "bash -lc 'kubectl get nodes'")),
        Row((CLIENT_TOOLS, 1, 0), "host1: calicoctl get ippools as ubuntu", calicoctl_ok,
            f"calicoctl {calicoctl_version or '?'} (want {lab.calicoctl_version}); pools: {pools_seen}",
            on_vm(lab, CLIENT, "bash -lc 'calicoctl get ippools'")),
    ]


def _last_line(text: str | None, empty: str = "no output") -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else empty


# --- the cluster ----------------------------------------------------------------------------------


def node_rows(lab, nodes: list[dict]) -> list[Row]:
    """Each cluster VM is a node, Ready, with its lab address as InternalIP."""
    found = by_name(nodes)
    rows = []
    for index, name in enumerate((SERVER, *AGENTS)):
        node = found.get(name)
        check = f"node {name}: Ready, InternalIP {lab.vms[name].lab_ip}"
        if node is None:
            journal = on_vm(lab, name, f"sudo journalctl -u {k3s_unit(name)} -n 50")
            rows.append(Row((K3S, 1, index), check, False, "not registered", journal))
            continue
        ready = condition(node, "Ready") or {}
        internal = [a.get("address") for a in (node.get("status") or {}).get("addresses") or [] if a.get("type") == "InternalIP"]
        ok = ready.get("status") == "True" and lab.vms[name].lab_ip in internal
        observed = f"Ready={ready.get('status', '?')}"
        if ready.get("status") != "True":
            observed += ": " + ", ".join(x for x in (ready.get("reason"), ready.get("message")) if x)
        observed += f"; InternalIP {', '.join(internal) or 'none'}"
        rows.append(Row((K3S, 1, index), check, ok, observed, kubectl_hint(lab, f"describe node {name}")))
    return rows


def tigerastatus_row(lab, statuses: list[dict]) -> Row:
    """Every TigeraStatus Available and none Degraded (there must be at least one)."""
    seen, ok = [], bool(statuses)
    for status in sorted(statuses, key=lambda s: (s.get("metadata") or {}).get("name", "")):
        name = (status.get("metadata") or {}).get("name", "?")
        available = (condition(status, "Available") or {}).get("status") == "True"
        degraded = condition(status, "Degraded") or {}
        if degraded.get("status") == "True":
            seen.append(f"{name} Degraded: {degraded.get('message') or degraded.get('reason') or 'no message'}")
            ok = False
        elif not available:
            seen.append(f"{name} not Available")
            ok = False
        else:
            seen.append(f"{name} Available")
    return Row((CALICO, 0, 0), "TigeraStatus: all Available, none Degraded", ok, "; ".join(seen) or "none exist",
               kubectl_hint(lab, "get tigerastatus -o wide"))


def calico_component_rows(lab, daemonset: dict | None, deployments: dict[str, dict | None]) -> list[Row]:
    """calico-node on every node; calico-kube-controllers and calico-typha available."""
    node_count = len((SERVER, *AGENTS))
    status = (daemonset or {}).get("status") or {}
    available, desired = status.get("numberAvailable") or 0, status.get("desiredNumberScheduled") or 0
    rows = [Row((CALICO, 1, 0), "calico-node running on every node", daemonset is not None and available >= node_count,
                f"{available} of {desired} available ({node_count} nodes)" if daemonset else "daemonset not found",
                kubectl_hint(lab, f"-n {CALICO_NAMESPACE} get pods -o wide"))]
    for index, name in enumerate(sorted(deployments)):
        dep = deployments[name]
        st = (dep or {}).get("status") or {}
        want = ((dep or {}).get("spec") or {}).get("replicas", 1)
        ready = st.get("availableReplicas") or 0
        rows.append(Row((CALICO, 2, index), f"{name} available", dep is not None and ready >= max(want, 1),
                        f"{ready}/{want} available" if dep else "deployment not found",
                        kubectl_hint(lab, f"-n {CALICO_NAMESPACE} describe deployment {name}")))
    return rows


def pool_encapsulation(spec: dict) -> str:
    """The Installation's encapsulation name for an IPPool spec (``ipipMode``/``vxlanMode``)."""
    modes = (spec.get("ipipMode") or "Never", spec.get("vxlanMode") or "Never")
    for name, pair in ENCAPSULATION_MODES.items():
        if pair == modes:
            return name
    return f"ipipMode={modes[0]}, vxlanMode={modes[1]}"


def ippool_row(lab, pools: list[dict], error: str = "") -> Row:
    """The pool of the settings' CIDR exists with the settings' block size, natOutgoing, encapsulation."""
    check = f"IPPool {lab.calico_pool_cidr} matches the settings"
    hint = kubectl_hint(lab, "get ippools.crd.projectcalico.org -o yaml")
    if error:
        return Row((CALICO, 3, 0), check, False, f"cannot read IPPools: {error}", hint)
    specs = [p.get("spec") or {} for p in pools]
    match = next((s for s in specs if s.get("cidr") == str(lab.calico_pool_cidr)), None)
    if match is None:
        return Row((CALICO, 3, 0), check, False,
                   "pools: " + (", ".join(str(s.get("cidr")) for s in specs) or "none"), hint)
    seen = {
        "blockSize": match.get("blockSize"),
        "natOutgoing": "Enabled" if match.get("natOutgoing") else "Disabled",
        "encapsulation": pool_encapsulation(match),
    }
    want = {"blockSize": lab.calico_pool_block_size, "natOutgoing": lab.calico_pool_nat_outgoing,
            "encapsulation": lab.calico_pool_encapsulation}
    wrong = [f"{k} {seen[k]} (want {want[k]})" for k in want if seen[k] != want[k]]
    observed = ", ".join(f"{k} {v}" for k, v in seen.items())
    return Row((CALICO, 3, 0), check, not wrong, "; ".join(wrong) if wrong else observed,
               DEPLOY_COMMAND + " (it says how the pool can be changed)")


def expected_replicas(manifest_yaml: str) -> dict[str, int]:
    """``{deployment: replicas}`` of a rendered manifest (default 1, like Kubernetes)."""
    out = {}
    for doc in parse_manifest(manifest_yaml):
        if doc["kind"] == "Deployment":
            out[doc["metadata"]["name"]] = (doc.get("spec") or {}).get("replicas", 1)
    return out


def yaobank_rows(lab, deployments: dict[str, dict | None], expected: dict[str, int]) -> list[Row]:
    """Each YaoBank deployment rolled out with the replicas of the manifest available."""
    rows = []
    for index, name in enumerate(("customer", "summary", "database")):
        dep, want = deployments.get(name), expected.get(name, 1)
        check = f"yaobank/{name} rolled out ({want} replica{'s' if want != 1 else ''})"
        if dep is None:
            rows.append(Row((APP, 0, index), check, False, "deployment not found", DEPLOY_COMMAND))
            continue
        spec_replicas = (dep.get("spec") or {}).get("replicas", 1)
        available = (dep.get("status") or {}).get("availableReplicas") or 0
        rollout = rollout_status(dep)
        ok = rollout.done and spec_replicas == want and available >= want
        observed = f"{available}/{spec_replicas} available; {rollout.message}"
        action = (f"scale deployment {name} --replicas={want}" if spec_replicas != want
                  else f"describe deployment {name}")
        hint = kubectl_hint(lab, f"-n {lab.yaobank_namespace} {action}")
        rows.append(Row((APP, 0, index), check, ok, observed, hint))
    return rows
