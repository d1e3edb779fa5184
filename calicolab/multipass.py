"""Pure helpers for talking to the Multipass CLI.

Everything here is side-effect free except :func:`run_process` and :func:`run_parallel`, the two
places that start local subprocesses (the connector, the operations and :func:`list_instances` all
go through them, so tests can patch one function).

Shapes and messages follow Multipass 1.16 (canonical/multipass ``src/client/cli/formatter``):

* ``multipass list --format json`` -> ``{"list": [{"name", "state", "ipv4": [...], "release"}]}``;
  ``release`` is ``"20.04 LTS"`` before 1.11 and ``"Ubuntu 24.04 LTS"`` / ``"Not Available"`` since.
* an unreachable daemon says ``cannot connect to the multipass socket`` (exit 2 or 3: match the text).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import signal
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gevent
from gevent import subprocess as gsubprocess
from gevent.event import AsyncResult

# --- constants -------------------------------------------------------------------------------

DEFAULT_BIN = "multipass"
DEFAULT_EXEC_TIMEOUT = 600
#: Seconds a `multipass list` may take (connect, state re-checks).
LIST_TIMEOUT = 60
INSTALL_URL = "https://canonical.com/multipass/install"

RUNNING = "Running"
STOPPED = "Stopped"
SUSPENDED = "Suspended"
DELETED = "Deleted"
UNKNOWN = "Unknown"
#: Every state Multipass prints (format_utils.cpp `status_string_for`; main adds "Unavailable").
STATES = (
    "Running",
    "Stopped",
    "Deleted",
    "Starting",
    "Restarting",
    "Delayed Shutdown",
    "Suspending",
    "Suspended",
    "Unknown",
    "Unavailable",
)
#: States that become Running on their own (wait for them instead of failing).
TRANSITIONAL_STATES = ("Starting", "Restarting")

DAEMON_DOWN_MARKER = "cannot connect to the multipass socket"

# Instance names: letters, digits, hyphens; starts with a letter, ends alphanumeric.
_NAME_RE = re.compile(r"^[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")
_SIZE_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)?[KMG]?(?:i?B)?$", re.IGNORECASE)


class MultipassOutputError(ValueError):
    """Multipass printed something that is not in the documented shape."""


# --- names, binaries, command builders -----------------------------------------------------


def check_instance_name(name: str) -> str:
    """Return ``name`` if Multipass accepts it as an instance name, raise ``ValueError`` otherwise."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid Multipass instance name {name!r}: use letters, digits and hyphens, "
            "start with a letter and end with a letter or digit",
        )
    return name


def bin_argv(multipass_bin: str | None) -> list[str]:
    """``multipass_bin`` as an argv prefix (``"snap run multipass"`` is allowed)."""
    argv = shlex.split(multipass_bin or DEFAULT_BIN)
    if not argv:
        raise ValueError("multipass_bin is empty")
    return argv


shell_join = shlex.join  # an argv as one shell command line


def typed_client(multipass_bin: str | None) -> str:
    """The configured client as a user types it in a hint's command: ``typed_client("snap run multipass")``
    -> ``"snap run multipass"``, ``typed_client(None)`` -> ``"multipass"``."""
    return shell_join(bin_argv(multipass_bin))


def version_argv(multipass_bin: str | None = None) -> list[str]:
    return [*bin_argv(multipass_bin), "version", "--format", "json"]


def list_argv(multipass_bin: str | None = None) -> list[str]:
    return [*bin_argv(multipass_bin), "list", "--format", "json"]


def exec_argv(multipass_bin: str | None, name: str, remote_command: str) -> list[str]:
    """``multipass exec NAME -- sh -c '<remote_command>'`` as an argv list.

    ``remote_command`` is already a complete shell command line (pyinfra's wrapped command, which
    itself starts with ``sh -c`` or ``sudo -H -n sh -c``); Multipass quotes every argv element, so the
    outer ``sh -c`` receives it as one string.
    """
    return [*bin_argv(multipass_bin), "exec", check_instance_name(name), "--", "sh", "-c", remote_command]


def launch_argv(
    multipass_bin: str | None,
    name: str,
    image: str,
    cpus: int,
    memory: str,
    disk: str,
    timeout: int,
) -> list[str]:
    """``multipass launch`` reading its cloud-init from stdin (``--cloud-init -``)."""
    for label, value in (("image", image), ("memory", memory), ("disk", disk)):
        if not value or str(value).startswith("-"):
            raise ValueError(f"invalid {label} for {name}: {value!r}")
    return [
        *bin_argv(multipass_bin),
        "launch",
        "-n",
        check_instance_name(name),
        "-c",
        str(int(cpus)),
        "-m",
        str(memory),
        "-d",
        str(disk),
        "--cloud-init",
        "-",
        "--timeout",
        str(int(timeout)),
        str(image),
    ]


def start_argv(multipass_bin: str | None, names: Iterable[str], timeout: int | None = None) -> list[str]:
    argv = [*bin_argv(multipass_bin), "start"]
    if timeout:
        argv += ["--timeout", str(int(timeout))]
    return argv + [check_instance_name(n) for n in names]


def cancel_stop_argv(multipass_bin: str | None, names: Iterable[str]) -> list[str]:
    return [*bin_argv(multipass_bin), "stop", "--cancel", *(check_instance_name(n) for n in names)]


def delete_argv(multipass_bin: str | None, names: Iterable[str]) -> list[str]:
    names = [check_instance_name(n) for n in names]
    if not names:
        raise ValueError("refusing to build `multipass delete` without instance names")
    return [*bin_argv(multipass_bin), "delete", "--purge", *names]


def upload_temp_path(remote_filename: str, token: str) -> str:
    """Temporary file inside the VM for put_file (the VM's /tmp, never the workstation's)."""
    base = os.path.basename(remote_filename.rstrip("/")) or "file"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:60]
    return f"/tmp/calicolab-upload-{token}-{base}"


def stdin_to_bytes(stdin: Any) -> bytes | None:
    """Convert pyinfra's ``_stdin`` (bytes, or text: a str, a list of lines, a file object) into bytes.

    Text is handled as ``pyinfra.connectors.util.write_stdin`` does: every line ends with a newline.
    """
    if stdin is None or isinstance(stdin, bytes):
        return stdin
    if hasattr(stdin, "readlines"):
        stdin = stdin.readlines()
    if not isinstance(stdin, (list, tuple)):
        stdin = [stdin]
    return "".join(line if line.endswith("\n") else f"{line}\n" for line in stdin).encode()


# --- parsing --------------------------------------------------------------------------------


def _load_json(text: str | bytes, what: str) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text or not text.strip():
        raise MultipassOutputError(f"{what}: empty output")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        snippet = text.strip().splitlines()[0][:120]
        raise MultipassOutputError(f"{what}: not JSON ({e.msg}): {snippet!r}") from e


def parse_list(text: str | bytes) -> dict[str, dict[str, Any]]:
    """Parse ``multipass list --format json`` into ``{name: {"state", "ipv4", "release"}}``."""
    data = _load_json(text, "multipass list --format json")
    if not isinstance(data, dict) or not isinstance(data.get("list"), list):
        raise MultipassOutputError('multipass list --format json: expected {"list": [...]}')
    instances: dict[str, dict[str, Any]] = {}
    for entry in data["list"]:
        if not isinstance(entry, dict):
            raise MultipassOutputError(f"multipass list --format json: entry is not an object: {entry!r}")
        name, state = entry.get("name"), entry.get("state")
        if not isinstance(name, str) or not name:
            raise MultipassOutputError(f"multipass list --format json: entry without a name: {entry!r}")
        if not isinstance(state, str) or not state:
            raise MultipassOutputError(f"multipass list --format json: {name} has no state")
        ipv4 = entry.get("ipv4") or []
        if not isinstance(ipv4, list) or not all(isinstance(ip, str) for ip in ipv4):
            raise MultipassOutputError(f"multipass list --format json: {name}: ipv4 is not a list of strings")
        release = entry.get("release", "")
        if not isinstance(release, str):
            raise MultipassOutputError(f"multipass list --format json: {name}: release is not a string")
        instances[name] = {"state": state, "ipv4": list(ipv4), "release": release}
    return instances


#: The oldest Multipass release calicolab supports: the JSON shapes, states and messages it relies on
#: are those of 1.14 to 1.16 (list's "Ubuntu <release>" strings since 1.11, `exec` starting a stopped
#: instance since 1.9, `launch --cloud-init -` and `--timeout`).
MINIMUM_VERSION = (1, 14, 0)


def parse_version(text: str | bytes) -> tuple[str, str | None]:
    """``multipass version --format json`` -> ``(client, daemon)``; daemon is None when it did not answer.

    The client prints its own version even when the daemon is down, and then leaves ``multipassd`` out
    (canonical/multipass ``json_formatter.cpp``, ``format(VersionReply)``); exit code 0 in both cases.
    """
    data = _load_json(text, "multipass version --format json")
    if not isinstance(data, dict) or not isinstance(data.get("multipass"), str):
        raise MultipassOutputError('multipass version --format json: expected {"multipass": "X.Y.Z", ...}')
    daemon = data.get("multipassd")
    return data["multipass"], daemon if isinstance(daemon, str) and daemon else None


def version_tuple(version: str) -> tuple[int, int, int] | None:
    """``"1.16.3+mac"`` -> ``(1, 16, 3)``; None when it does not start with a version number."""
    match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def parse_cloud_init_status(lines: Iterable[str]) -> dict[str, Any] | None:
    """Parse ``cloud-init status [--long]``: ``{"status", "extended_status", "detail", "errors",
    "error_list"}``; ``error_list`` holds the entries of the ``errors:`` block (``- ('module', Error(...))``)."""
    result: dict[str, Any] = {}
    detail_lines: list[str] = []
    error_list: list[str] = []
    block = None
    for raw in lines:
        line = raw.rstrip()
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key in ("status", "extended_status", "boot_status_code", "last_update", "time", "errors",
                           "recoverable_errors"):
            block = key
            result[key] = value.strip()
            continue
        if sep and key == "detail":
            block = "detail"
            if value.strip():
                detail_lines.append(value.strip())
            continue
        if block == "detail":
            detail_lines.append(line.strip())
        elif block == "errors" and line.strip().startswith("- "):
            error_list.append(line.strip()[2:].strip())
        elif sep and not raw[:1].isspace():
            block = None  # another key (WARNING:, ...)
    if "status" not in result:
        return None
    result["detail"] = "\n".join(detail_lines)
    result["error_list"] = error_list
    return result


# cloud-init reports a failed module as ``('module_name', SomeError('...'))``
_MODULE_ERROR_RE = re.compile(r"\(\s*'([A-Za-z0-9_-]+)'\s*,\s*(.*?)\)?\s*$")
#: what a cloud-init module runs from the user-data, for modules whose name does not say it
MODULE_RUNS = {
    "scripts_user": "the runcmd commands",
    "package_update_upgrade_install": "packages",
    "scripts_per_once": "per-once scripts",
    "scripts_per_boot": "per-boot scripts",
}


def cloud_init_failed_modules(parsed: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``[(module, error)]`` from parsed ``cloud-init status --long`` (the ``errors:`` block since
    cloud-init 23.4, the ``detail:`` text before that)."""
    entries = list(parsed.get("error_list") or [])
    entries += [line for line in str(parsed.get("detail") or "").splitlines() if line.startswith("(")]
    found: list[tuple[str, str]] = []
    for entry in entries:
        match = _MODULE_ERROR_RE.match(entry.strip())
        if match and match.group(1) not in [module for module, _ in found]:
            found.append((match.group(1), match.group(2).strip()))
    return found


def recreate_hint(name: str, multipass_bin: str | None = None) -> str:
    """How to build one VM again from its cloud-init (which runs only on first boot)."""
    mp = typed_client(multipass_bin)
    return (
        f"cloud-init runs only on a VM's first boot: recreate {name} with `{mp} delete --purge {name}`, "
        f"then re-run the deploy (it launches {name} again)"
    )


def cloud_init_error_message(name: str, parsed: Mapping[str, Any], multipass_bin: str | None = None) -> str:
    """The failing module(s), the raw status, where the log is, and how to recreate the VM.

    Example first line: ``cloud-init failed in node2 (status: error), module scripts_user (the runcmd
    commands): RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands')``
    """
    mp = typed_client(multipass_bin)
    modules = cloud_init_failed_modules(parsed)
    what = "; ".join(
        f"module {module}" + (f" ({MODULE_RUNS[module]})" if module in MODULE_RUNS else "") + f": {error}"
        for module, error in modules
    ) or "no failing module named"
    raw = "\n".join(f"        {line}" for line in str(parsed.get("raw") or "").splitlines())
    return (
        f"cloud-init failed in {name} (status: error), {what}\n"
        f"`cloud-init status --long`:\n{raw}\n"
        f"Its output: `{mp} exec {name} -- sudo tail -n 50 /var/log/cloud-init-output.log`\n"
        f"Next: fix the cause (a setting or the network), then {recreate_hint(name, multipass_bin)}"
    )


# --- error classification -------------------------------------------------------------------


@dataclass
class MultipassFailure:
    kind: str
    message: str


_ERROR_PATTERNS = (
    ("daemon-down", re.compile(re.escape(DAEMON_DOWN_MARKER), re.I)),
    ("already-exists", re.compile(r"already exists", re.I)),
    ("being-prepared", re.compile(r"is being prepared", re.I)),
    ("deleted", re.compile(r"is deleted|Use 'recover'", re.I)),
    ("does-not-exist", re.compile(r"does not exist", re.I)),
    ("timeout", re.compile(r"timed out", re.I)),
    ("bad-image", re.compile(r"not a supported alias|Unable to find an image", re.I)),
    ("cloud-init", re.compile(r"cloud-init config|cloud-init configuration", re.I)),
    ("not-running", re.compile(r"is not running", re.I)),
)


def clean_message(stdout: str | bytes = "", stderr: str | bytes = "") -> str:
    """The useful part of Multipass' output (stderr first), on one line per message line."""
    parts = []
    for chunk in (stderr, stdout):
        if isinstance(chunk, bytes):
            chunk = chunk.decode("utf-8", "replace")
        chunk = (chunk or "").strip()
        if chunk:
            parts.append(chunk)
    return "\n".join(parts)


def classify_error(returncode: int | None, stdout: str | bytes = "", stderr: str | bytes = "") -> MultipassFailure:
    """Classify a failed Multipass call by its message: its exit codes do not tell the causes apart
    (a daemon that does not answer exits 2 or 3 depending on the command)."""
    message = clean_message(stdout, stderr)
    for kind, pattern in _ERROR_PATTERNS:
        if pattern.search(message):
            return MultipassFailure(kind, message)
    if returncode == 5:
        return MultipassFailure("timeout", message)
    return MultipassFailure("other", message or f"exit code {returncode}")


def workstation_os() -> str:
    """``"macos"``, ``"wsl"``, ``"windows"`` or ``"linux"``: which install and restart commands apply here."""
    system = platform.system()
    if system == "Darwin":
        return "macos"
    if system == "Windows":
        return "windows"
    if "microsoft" in platform.release().lower():
        return "wsl"
    return "linux"


_INSTALL = {
    "macos": f"`brew install --cask multipass` (or the installer from {INSTALL_URL})",
    "linux": "`sudo snap install multipass`",
    "wsl": f"Multipass for Windows from {INSTALL_URL}, then set --data multipass_bin=multipass.exe",
    "windows": f"the Windows installer from {INSTALL_URL}",
}
_RESTART = {
    "macos": "`sudo launchctl kickstart -k system/com.canonical.multipassd`",
    "linux": "`sudo snap restart multipass`",
    "wsl": "`Restart-Service Multipass` in an administrator PowerShell on Windows",
    "windows": "`Restart-Service Multipass` in an administrator PowerShell",
}
_UPGRADE = {
    "macos": f"`brew upgrade --cask multipass` (or the installer from {INSTALL_URL})",
    "linux": "`sudo snap refresh multipass`",
    "wsl": f"the current Windows installer from {INSTALL_URL}",
    "windows": f"the current Windows installer from {INSTALL_URL}",
}


def daemon_down_hint(os_name: str | None = None) -> str:
    restart = _RESTART[os_name or workstation_os()]
    return (
        f"the Multipass daemon does not answer: restart it with {restart}, wait until "
        "`multipass version` lists multipassd, then run again"
    )


def not_installed_hint(multipass_bin: str | None, os_name: str | None = None) -> str:
    return (
        f"multipass not found: install it with {_INSTALL[os_name or workstation_os()]}, or set multipass_bin "
        f"to where it is (currently {multipass_bin or DEFAULT_BIN!r})"
    )


def upgrade_hint(found: str, minimum: str, os_name: str | None = None) -> str:
    return (
        f"Multipass {found} is older than {minimum}, the oldest release calicolab supports: upgrade it with "
        f"{_UPGRADE[os_name or workstation_os()]}, then run again"
    )


def explain_failure(action: str, name: str, failure: MultipassFailure, multipass_bin: str | None = None) -> str:
    """What failed, Multipass' own message, then the next thing to try (a command to paste or a setting).

    Example: ``explain_failure("start", "node1", classify_error(2, "", "start failed: ..."))`` →
    ``"start node1 failed: start failed: ... Next: run `multipass start node1` to see ... then re-run the deploy"``
    """
    mp = typed_client(multipass_bin)
    message = failure.message.strip()
    rerun = "then re-run the deploy"
    hints = {
        "daemon-down": daemon_down_hint(),
        "deleted": f"run `{mp} recover {name}` to keep it or `{mp} purge` to remove it for good, {rerun}",
        "already-exists": f"an instance named {name} appeared after this run looked: another calicolab run or "
        f"another process may be creating it right now. Check `{mp} list` and wait for that run to finish, "
        f"{rerun}; only if nothing uses {name}, remove it (`{mp} delete --purge {name}`) and re-run",
        "being-prepared": f"another launch of {name} is running: wait for it (`{mp} list`), {rerun}",
        "bad-image": f"set ubuntu_image to an alias listed by `{mp} find` (e.g. --data ubuntu_image=24.04), "
        "then re-run the deploy",
        "cloud-init": "the rendered cloud-init was rejected: check it with `python -m calicolab render OUT_DIR` "
        f"(OUT_DIR/cloud-init/{name}.yaml), fix the setting it comes from, {rerun}",
        "timeout": f"Multipass timed out; check `{mp} list` and `{mp} info {name}`; on slow links raise "
        f"timeout_cloud_init (e.g. --data timeout_cloud_init=1800), {rerun}",
        "does-not-exist": f"{name} does not exist (any more, see `{mp} list`): re-run the deploy, which "
        "launches it",
        "not-running": f"start it with `{mp} start {name}`, {rerun}",
    }
    generic = {
        "launch": f"check `{mp} list` and `{mp} info {name}` and the free memory and disk for the VM sizes "
        f"(vm_memory, vm_disk); fix the cause, {rerun} (it launches only the missing VMs)",
        "start": f"run `{mp} start {name}` to see the whole error and `{mp} info {name}`; fix the cause, {rerun}",
    }
    hint = hints.get(failure.kind) or generic.get(
        action, f"run `{mp} {action} {name}` to see the whole error; fix the cause, {rerun}"
    )
    return f"{action} {name} failed: {message or 'no message'}. Next: {hint}"


def state_problem(name: str, state: str, multipass_bin: str | None = None) -> str | None:
    """Why an instance in ``state`` cannot simply be started, or None; its commands use ``multipass_bin``.

    Example: ``state_problem("node2", "Deleted", "multipass.exe")`` -> "instance node2 is deleted but not
    purged: run `multipass.exe recover node2` to keep it, ..."
    """
    mp = typed_client(multipass_bin)
    if state == DELETED:
        return (
            f"instance {name} is deleted but not purged: run `{mp} recover {name}` to keep it, "
            f"or `{mp} purge` to remove it for good, then re-run"
        )
    if state in (UNKNOWN, "Unavailable"):
        return (
            f"instance {name} is in state {state} (happens after the host slept or crashed): restart the "
            f"Multipass daemon with {_RESTART[workstation_os()]}, check `{mp} list`, then re-run"
        )
    return None


# --- instance specs and planning --------------------------------------------------------------


@dataclass(frozen=True)
class InstanceSpec:
    """What one lab VM should look like (the cloud-init is the rendered user-data text)."""

    name: str
    image: str
    cpus: int
    memory: str
    disk: str
    cloud_init: str = field(repr=False)

    def __post_init__(self):
        check_instance_name(self.name)
        if int(self.cpus) < 1:
            raise ValueError(f"{self.name}: cpus must be >= 1")
        for label, value in (("memory", self.memory), ("disk", self.disk)):
            if not _SIZE_RE.match(str(value)):
                raise ValueError(f"{self.name}: {label} {value!r} is not a size such as 1G or 2048M")
        if not isinstance(self.cloud_init, str):
            raise ValueError(f"{self.name}: cloud_init must be the rendered user-data text")

    @classmethod
    def coerce(cls, spec: InstanceSpec | Mapping[str, Any]) -> InstanceSpec:
        if isinstance(spec, cls):
            return spec
        return cls(**dict(spec))


@dataclass
class InstancesPlan:
    launch: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    cancel_stop: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.launch or self.start or self.cancel_stop or self.errors)


def plan_instances(names: Iterable[str], instances: Mapping[str, Mapping[str, Any]] | None,
                   multipass_bin: str | None = None) -> InstancesPlan:
    """Decide per instance what it takes to make it run, from the ``MultipassInstances`` fact value
    (the errors' commands use ``multipass_bin``).

    Example: ``plan_instances(["control", "node1"], {"node1": {"state": "Stopped"}})`` ->
    ``InstancesPlan(launch=["control"], start=["node1"])``
    """
    plan = InstancesPlan()
    instances = instances or {}
    for name in names:
        current = instances.get(name)
        if current is None:
            plan.launch.append(name)
            continue
        state = current.get("state")
        problem = state_problem(name, state, multipass_bin)
        if problem:
            plan.errors[name] = problem
        elif state == "Delayed Shutdown":
            plan.cancel_stop.append(name)
        elif state != RUNNING:  # Stopped, Suspended, Suspending, Starting, Restarting, anything new
            plan.start.append(name)
    return plan


# --- local processes --------------------------------------------------------------------------


class ProcessResult(gsubprocess.CompletedProcess):
    """A finished local process: ``args``, ``returncode``, ``stdout`` and ``stderr`` (bytes)."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def text(self, which: str = "stdout") -> str:
        return getattr(self, which).decode("utf-8", "replace")


def _kill_group(process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            process.kill()
        except OSError:
            pass


def run_process(argv: Sequence[str], stdin: bytes | None = None, timeout: float | None = None) -> ProcessResult:
    """Run ``argv`` locally (no shell), feed ``stdin``, collect output; gevent-friendly.

    On ``timeout`` the whole process group is killed and ``TimeoutError`` is raised (pyinfra itself
    does not kill local processes on timeout). ``FileNotFoundError`` means the binary is missing.
    """
    process = gsubprocess.Popen(
        list(argv),
        stdin=gsubprocess.PIPE,
        stdout=gsubprocess.PIPE,
        stderr=gsubprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(input=stdin or b"", timeout=timeout)
    except gsubprocess.TimeoutExpired:
        _kill_group(process)
        try:
            process.communicate(timeout=5)
        except gsubprocess.TimeoutExpired:
            pass
        raise TimeoutError(f"{shell_join(argv[:4])} ... timed out after {timeout}s (killed)")
    except BaseException:  # greenlet killed, Ctrl-C: do not leave the child (own session) behind
        _kill_group(process)
        raise
    return ProcessResult(list(argv), process.returncode, stdout or b"", stderr or b"")


def run_parallel(
    jobs: Mapping[str, tuple[Sequence[str], bytes | None]],
    timeout: float | None = None,
) -> dict[str, ProcessResult | BaseException]:
    """Run several local processes at the same time; ``{key: ProcessResult or the exception}``."""

    def _one(argv, stdin):
        try:
            return run_process(argv, stdin=stdin, timeout=timeout)
        except (OSError, TimeoutError) as e:
            return e

    greenlets = {key: gevent.spawn(_one, argv, stdin) for key, (argv, stdin) in jobs.items()}
    gevent.joinall(list(greenlets.values()))
    return {key: greenlet.value for key, greenlet in greenlets.items()}


class MultipassUnavailable(Exception):
    """``multipass list`` gave no answer to trust: not installed, daemon down, failed, or unreadable output.

    The message says why and what to do; it never means "no instance exists".
    """


def list_instances(multipass_bin: str | None = None, timeout: float = LIST_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Every instance, from ``multipass list --format json`` (see :func:`parse_list`), read now.

    Raises ``MultipassUnavailable`` naming the cause when Multipass cannot answer. The one place that
    runs ``multipass list`` for the connector, the operations and the diagnosis.

    Example: ``list_instances("multipass")`` -> ``{"control": {"state": "Running", "ipv4": [...], ...}}``
    """
    argv = list_argv(multipass_bin)
    try:
        result = run_process(argv, timeout=timeout)
    except FileNotFoundError as e:
        raise MultipassUnavailable(not_installed_hint(multipass_bin)) from e
    except PermissionError as e:
        raise MultipassUnavailable(f"cannot run {multipass_bin or DEFAULT_BIN!r}: {e}") from e
    except TimeoutError as e:
        raise MultipassUnavailable(f"`multipass list` did not answer within {timeout:.0f}s: {daemon_down_hint()}") from e
    message = clean_message(result.stdout, result.stderr)
    if DAEMON_DOWN_MARKER in message.lower():
        raise MultipassUnavailable(f"{daemon_down_hint()} ({message})")
    if not result.ok:
        raise MultipassUnavailable(f"`multipass list` failed (exit {result.returncode}): {message}")
    try:
        return parse_list(result.stdout)
    except MultipassOutputError as e:
        raise MultipassUnavailable(str(e)) from e


def planned_instances(run_state, multipass_bin: str | None = None) -> dict[str, dict[str, Any]]:
    """:func:`list_instances`, asked once per run while pyinfra connects and plans the deploy (nothing
    has run yet, so the instances do not change), and kept on the run's ``State``; every later call
    reads now.

    pyinfra connects every host at once and loads the deploy file once per host: each asking Multipass
    for the same list would cost a round trip to the daemon each. Raises ``MultipassUnavailable``
    like :func:`list_instances` (to every caller that shares the answer).

    Example: ``planned_instances(state, "multipass")["control"]["ipv4"]`` -> ``["192.168.64.5", ...]``
    """
    if run_state.is_executing:
        return list_instances(multipass_bin)
    shared = run_state.__dict__.setdefault("calicolab_planned_instances", {})
    listing = shared.get(multipass_bin)
    if listing is None:
        listing = shared[multipass_bin] = AsyncResult()
        try:
            listing.set(list_instances(multipass_bin))
        except MultipassUnavailable as e:
            listing.set_exception(e)
    return listing.get()


def instances_while_planned(run_state, multipass_bin: str | None = None) -> dict[str, dict[str, Any]] | None:
    """What :func:`planned_instances` listed while the run was planned; None when it was not asked (or
    Multipass did not answer). Never asks Multipass.

    Example: ``instances_while_planned(state, "multipass")["host1"]["state"]`` -> ``"Running"``
    """
    listing = run_state.__dict__.get("calicolab_planned_instances", {}).get(multipass_bin)
    return listing.value if listing is not None and listing.successful() else None
