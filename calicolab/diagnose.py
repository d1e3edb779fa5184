"""A diagnostics bundle: everything a helper on the course forum would ask for, secrets masked.

One folder per run, ``<state folder>/diagnostics/<UTC time>/`` (mode 0700, files 0600), holding:

* ``summary.txt`` — the failing checks and failed steps first, then where to look;
* ``report.txt`` (the report card, when checks ran) and ``run-log.txt`` (the run's warnings/errors);
* ``multipass/list.json``, ``multipass/info.json``;
* ``vms/NAME/``: ``cloud-init status --long``, the tail of ``cloud-init-output.log``, the journal
  of k3s or k3s-agent (and bird, vsftpd);
* ``cluster/``: nodes, pods in every namespace, recent events, every TigeraStatus, the
  Installation, the IPPools, the tigera-operator's recent log (read with ``k3s kubectl`` on control);
* ``rendered/`` (what :func:`calicolab.render.render_all` writes) and ``settings.json``.

Collection never fails as a whole: a VM that is not Running is never exec'd into (that would start
it); it gets a line saying so, and everything else is still collected. Every file passes through
:func:`scrub`: the join token, the kubeconfig's credentials, and every PEM key or certificate are
replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from collections import deque
from pathlib import Path
from typing import Iterable

from pyinfra.api.state import BaseStateCallback

from calicolab import checks
from calicolab.constants import CLIENT, SERVER
from calicolab.multipass import (
    MultipassUnavailable,
    bin_argv,
    exec_argv,
    list_argv,
    run_parallel,
    run_process,
)
from calicolab.multipass import list_instances as mp_list_instances
from calicolab.render import render_all
from calicolab.state import DIAGNOSTICS_DIR, FILE_MODE, FOLDER_MODE, MASK, SECRET_FILTER, LabState, mask, register_kubeconfig_secrets

COMMAND_TIMEOUT = 90
LOG_TAIL = 200
RUN_LOG_LINES = 200

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
_SECRET_FIELDS = re.compile(
    r"(?P<key>\b(?:client-key-data|client-certificate-data|certificate-authority-data|client-key|token|"
    r"password|tls\.key|tls\.crt|ca\.crt|K3S_TOKEN|agent-token)\b[\"']?\s*[:=]\s*)(?P<value>[\"']?[^\s\"',}]+)",
    re.I,
)
_K3S_TOKEN = re.compile(r"K10[0-9a-f]{16,}::[^\s\"']+")
# base64 runs this long are key or certificate material, never something a helper needs to read
_LONG_BASE64 = re.compile(r"[A-Za-z0-9+/]{120,}={0,2}")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known secrets, PEM blocks, credential fields, k3s tokens and long base64 masked.

    .. code:: python

        scrub("token: abcdefgh12345678")  # -> "token: ***"
    """
    text = mask(text, set(secrets) | set(SECRET_FILTER.secrets))
    text = _PEM.sub(lambda m: f"-----BEGIN {m.group(1)}----- {MASK} -----END {m.group(1)}-----", text)
    text = _K3S_TOKEN.sub(MASK, text)
    text = _SECRET_FIELDS.sub(lambda m: m.group("key") + MASK, text)
    return _LONG_BASE64.sub(MASK, text)


def known_secrets(lab) -> list[str]:
    """The lab's secrets from the local state folder (never written, only read)."""
    state = LabState(lab.state_path)
    found = []
    try:
        token = state.peek_cluster_token()
        if token:
            found.append(token)
        kubeconfig = state.read_kubeconfig()
        if kubeconfig:
            register_kubeconfig_secrets(kubeconfig)
    except Exception:  # an unreadable state folder must not stop the collection
        pass
    return found + sorted(SECRET_FILTER.secrets)


class Bundle:
    """A private folder that only accepts scrubbed text."""

    def __init__(self, root: Path, secrets: Iterable[str]):
        self.root, self.secrets = root, list(secrets)
        self.problems: list[str] = []

    @classmethod
    def create(cls, lab, secrets: Iterable[str]) -> "Bundle":
        base = LabState(lab.state_path).ensure() / DIAGNOSTICS_DIR
        base.mkdir(mode=FOLDER_MODE, exist_ok=True)
        os.chmod(base, FOLDER_MODE)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for attempt in range(100):
            root = base / (stamp if not attempt else f"{stamp}-{attempt}")
            try:
                root.mkdir(mode=FOLDER_MODE)
                os.chmod(root, FOLDER_MODE)
                return cls(root, secrets)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free bundle name under {base}")

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        for parent in reversed(path.relative_to(self.root).parents[:-1]):
            folder = self.root / parent
            if not folder.exists():
                folder.mkdir(mode=FOLDER_MODE)
                os.chmod(folder, FOLDER_MODE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(scrub(text, self.secrets).rstrip("\n") + "\n")
        os.chmod(path, FILE_MODE)
        return path

    def note(self, relative: str, why: str) -> None:
        """A part that could not be collected: say so in its place and in the summary."""
        self.problems.append(f"{relative}: {why}")
        self.write(relative, f"not collected: {why}")


def list_instances(lab) -> tuple[dict | None, str]:
    """``multipass list`` parsed (:func:`calicolab.multipass.list_instances`), or ``(None, why)``.

    Example: ``list_instances(lab)`` -> ``(None, "the Multipass daemon does not answer: ...")``
    """
    try:
        return mp_list_instances(lab.multipass_bin, timeout=COMMAND_TIMEOUT), ""
    except MultipassUnavailable as exc:
        return None, str(exc)


def lab_exists(lab) -> bool:
    """Whether there is anything to diagnose: the state folder or one of the lab's VMs (when Multipass
    cannot say, only the state folder counts: the run's own error already names Multipass' problem)."""
    if Path(lab.state_path).exists():
        return True
    instances, _ = list_instances(lab)
    return any(name in (instances or {}) for name in lab.vms)


def _output(result) -> str:
    if isinstance(result, BaseException):
        return f"failed: {type(result).__name__}: {result}"
    text = result.text()
    err = result.text("stderr").strip()
    if not result.ok:
        text += f"\n(exit status {result.returncode}){': ' + err if err else ''}"
    return text


def _vm_script(name: str) -> str:
    units = {SERVER: ["k3s", "vsftpd"], CLIENT: ["bird"]}.get(name, ["k3s-agent", "vsftpd"])
    sections = {
        "cloud-init-status.txt": "cloud-init status --long",
        "cloud-init-output.log": f"tail -n {LOG_TAIL} /var/log/cloud-init-output.log",
        "addresses.txt": "ip -4 addr show; ip -4 route show",
    }
    for unit in units:
        sections[f"journal-{unit}.txt"] = f"journalctl -u {unit} -n {LOG_TAIL} --no-pager"
    return checks.sectioned_script(sections)


CLUSTER_SECTIONS = {
    "nodes.txt": "k3s kubectl get nodes -o wide",
    "nodes.yaml": "k3s kubectl get nodes -o yaml",
    "pods.txt": "k3s kubectl get pods -A -o wide",
    "workloads.txt": "k3s kubectl get deployments,daemonsets -A -o wide",
    "events.txt": f"k3s kubectl get events -A --sort-by=.lastTimestamp | tail -n {LOG_TAIL}",
    "tigerastatus.yaml": "k3s kubectl get tigerastatus -o yaml",
    "installation.yaml": "k3s kubectl get installation default -o yaml",
    "ippools.yaml": "k3s kubectl get ippools.crd.projectcalico.org -o yaml",
    "tigera-operator.log": f"k3s kubectl -n tigera-operator logs deployment/tigera-operator --tail={LOG_TAIL}",
}


def _exec(lab, name: str, script: str) -> list[str]:
    return exec_argv(lab.multipass_bin, name, "sudo sh -c " + shlex.quote(script))


def _collect_multipass(lab, bundle: Bundle) -> dict[str, str]:
    """``multipass list`` and ``info``; returns each lab VM's state (``Absent`` when missing)."""
    states = {name: "Unknown" for name in lab.vms}
    try:
        listing = run_process(list_argv(lab.multipass_bin), timeout=COMMAND_TIMEOUT)
        bundle.write("multipass/list.json", _output(listing))
        if listing.ok:
            known = {i["name"]: i["state"] for i in json.loads(listing.text()).get("list", [])}
            states = {name: known.get(name, "Absent") for name in lab.vms}
    except Exception as exc:
        bundle.note("multipass/list.json", f"{type(exc).__name__}: {exc}")
    present = [name for name in lab.vms if states[name] not in ("Absent", "Unknown")]
    if present:
        try:
            info = run_process([*bin_argv(lab.multipass_bin), "info", *present, "--format", "json"], timeout=COMMAND_TIMEOUT)
            bundle.write("multipass/info.json", _output(info))
        except Exception as exc:
            bundle.note("multipass/info.json", f"{type(exc).__name__}: {exc}")
    else:
        bundle.note("multipass/info.json", "no lab VM exists")
    return states


def _collect_running(lab, bundle: Bundle, states: dict[str, str]) -> None:
    """Each Running VM's logs and, through control, the cluster's objects (in parallel)."""
    jobs = {name: (_exec(lab, name, _vm_script(name)), None) for name, st in states.items() if st == "Running"}
    if states.get(SERVER) == "Running":
        jobs["@cluster"] = (_exec(lab, SERVER, checks.sectioned_script(CLUSTER_SECTIONS)), None)
    results = run_parallel(jobs, timeout=COMMAND_TIMEOUT) if jobs else {}
    for name, st in states.items():
        if st != "Running":
            bundle.note(f"vms/{name}/NOT-COLLECTED.txt", f"{name} is {st}: its logs were not read (that would start it)")
    for key, result in results.items():
        folder = "cluster" if key == "@cluster" else f"vms/{key}"
        if isinstance(result, BaseException) or not result.text().strip():
            bundle.note(f"{folder}/NOT-COLLECTED.txt", _output(result))
            continue
        for section, text in checks.split_sections(result.text()).items():
            bundle.write(f"{folder}/{section}", text or "(empty)")
    if states.get(SERVER) != "Running":
        bundle.note("cluster/NOT-COLLECTED.txt", f"control is {states.get(SERVER)}: the cluster was not read")


def _collect_inputs(lab, bundle: Bundle) -> None:
    try:
        for relative, text in render_all(lab).items():
            bundle.write(f"rendered/{relative}", text)
    except Exception as exc:
        bundle.note("rendered/NOT-RENDERED.txt", f"{type(exc).__name__}: {exc}")
    settings = {key: value for key, value in sorted(lab.settings.items())}
    bundle.write("settings.json", json.dumps(settings, indent=2, default=str))


WHERE_TO_LOOK = [
    ("VM Running", "multipass/list.json, multipass/info.json"),
    ("addresses", "vms/NAME/addresses.txt, vms/NAME/cloud-init-output.log, rendered/cloud-init/NAME.yaml"),
    ("lab names", "vms/NAME/cloud-init-output.log, rendered/cloud-init/NAME.yaml"),
    ("MSS", "vms/NAME/cloud-init-output.log, vms/NAME/cloud-init-status.txt"),
    ("vsftpd", "vms/NAME/journal-vsftpd.txt, vms/NAME/cloud-init-status.txt"),
    ("k3s", "vms/NAME/journal-k3s.txt or journal-k3s-agent.txt, rendered/k3s/"),
    ("node", "cluster/nodes.txt, cluster/nodes.yaml, cluster/events.txt"),
    ("TigeraStatus", "cluster/tigerastatus.yaml, cluster/tigera-operator.log, cluster/pods.txt"),
    ("calico", "cluster/workloads.txt, cluster/pods.txt, cluster/events.txt"),
    ("IPPool", "cluster/ippools.yaml, cluster/installation.yaml, settings.json"),
    ("yaobank", "cluster/workloads.txt, cluster/pods.txt, cluster/events.txt, rendered/manifests/yaobank.yaml"),
    ("kubectl", "vms/host1/cloud-init-output.log, rendered/host1/profile.sh"),
    ("calicoctl", "rendered/host1/profile.sh, cluster/ippools.yaml"),
    ("BIRD", "vms/host1/journal-bird.txt, rendered/bird/bird.conf"),
]


def summary_text(report: checks.Report, run_log: list[str], problems: list[str], reason: str) -> str:
    """The summary: why the bundle exists, failing checks and failed steps first, then where to look."""
    lines = [f"calicolab diagnostics: {reason}", ""]
    failures, steps = report.failures(), report.failed_steps
    lines.append("Failing checks and failed steps:")
    lines += [f"  FAIL {row.check}: {row.observed}" + (f"\n       try: {row.hint}" if row.hint else "") for row in failures]
    lines += [f"  FAILED STEP {step}" for step in steps]
    errors = [line for line in run_log if " ERROR " in f" {line} " or "failed" in line.lower()]
    lines += [f"  {line}" for line in errors[-20:]]
    if not (failures or steps or errors):
        lines.append("  none recorded")
    lines += ["", "Where to look:"]
    failing = " ".join(row.check for row in failures) + " " + " ".join(steps + errors)
    relevant = [(key, files) for key, files in WHERE_TO_LOOK if key.lower() in failing.lower()]
    for key, files in relevant or WHERE_TO_LOOK:
        lines.append(f"  {key}: {files}")
    lines += ["  the whole run's warnings and errors: run-log.txt", "  every check: report.txt"]
    if problems:
        lines += ["", "Not collected:"] + [f"  {p}" for p in problems]
    return "\n".join(lines)


def collect_bundle(lab, report: checks.Report, run_log: Iterable[str], reason: str) -> Path:
    """Write a bundle and return its folder. Never raises for a part that cannot be collected.

    .. code:: python

        path = collect_bundle(lab, checks.report_of(state), (), reason="requested with diagnose.py")
    """
    bundle = Bundle.create(lab, known_secrets(lab))
    run_log = list(run_log)
    if report.rows:
        bundle.write("report.txt", checks.render_table(report.sorted_rows()))
    bundle.write("run-log.txt", "\n".join(run_log) or "(nothing logged)")
    states = _collect_multipass(lab, bundle)
    _collect_running(lab, bundle, states)
    _collect_inputs(lab, bundle)
    bundle.write("summary.txt", summary_text(report, run_log, bundle.problems, reason))
    return bundle.root


# --- collecting by itself when a run fails ---------------------------------------------------------


class RunLog(logging.Handler):
    """Keeps the run's warnings and errors (already masked by the secret filter) for the bundle."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=RUN_LOG_LINES)
        self.addFilter(SECRET_FILTER)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())
        except Exception:
            message = str(record.msg)
        self.lines.append(f"{record.levelname} {message}")


class CollectOnFailure(BaseStateCallback):
    """On the run's first failed operation: record the step and write one bundle, print its path."""

    def __init__(self, lab, run_log: RunLog):
        self.lab, self.run_log, self.path = lab, run_log, None

    def operation_host_error(self, state, host, op_hash, retry_count: int = 0, max_retries: int = 0):
        if retry_count < max_retries:
            return
        report = checks.report_of(state)
        names = ", ".join(state.get_op_meta(op_hash).names) if op_hash in state.op_meta else op_hash
        report.failed_steps.append(f"{names!s} on {host.name}")
        if self.path is not None:
            return
        self.path = "collecting"
        logger = logging.getLogger("pyinfra")
        if not lab_exists(self.lab):  # a failure before anything exists (e.g. no multipass): nothing to collect
            logger.warning("no diagnostics bundle: neither a lab VM nor the state folder exists yet")
            return
        try:
            self.path = collect_bundle(self.lab, report, self.run_log.lines,
                                       reason=f"the run failed: {names} on {host.name}")
        except Exception as exc:  # the bundle is a help, never a second failure
            logger.error(f"diagnostics bundle could not be written: {type(exc).__name__}: {exc}")
            return
        logger.error(f"--> Diagnostics bundle (secrets masked): {self.path}")


def collect_on_failure(lab) -> None:
    """Arrange (once per run) for a bundle to be written when an operation fails. Call it from a
    deploy file; it hooks pyinfra's state callbacks and keeps the run's warnings for the bundle."""
    from pyinfra import state

    if getattr(state, "calicolab_collect_on_failure", None) is not None:
        return
    run_log = RunLog()
    logging.getLogger("pyinfra").addHandler(run_log)
    handler = CollectOnFailure(lab, run_log)
    state.calicolab_collect_on_failure = handler
    state.add_callback_handler(handler)
