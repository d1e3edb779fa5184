"""
k3s in the lab VMs: join token, configuration file, installer, service, API and node waits,
and the admin kubeconfig (fetched from control into the local state folder, installed on host1).

Secrets (the join token, the kubeconfig's client key) never appear in operation names or
arguments, in commands, in diffs or in logs: they travel as :class:`calicolab.state.SecretSource`
objects and are uploaded with the connector's ``put_file`` from an in-memory buffer.
All operations need root in the VM: call them with ``_sudo=True``.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import shlex
import time

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand, QuoteString, operation
from pyinfra.api.util import format_text
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import files

from calicolab.constants import K3S_KUBECONFIG_PATH, K3S_TOKEN_PATH
from calicolab.downloads import Download, workstation_arch
from calicolab.facts.k3s import K3S_BIN, K3sApiReadyz, K3sNodes, RewrittenFileSha256, node_names
from calicolab.operations.common import fail_with, print_once
from calicolab.polling import Check, Transient, poll
from calicolab.state import LabState, SecretSource, StateError, register_kubeconfig_secrets

#: where the k3s installer is copied in the VMs (beside the scripts it writes itself)
INSTALLER_PATH = "/usr/local/bin/k3s-install.sh"
#: the systemd unit k3s' installer writes for each role
UNITS = {"server": "k3s", "agent": "k3s-agent"}


# --- pure helpers (unit-tested) ---------------------------------------------------------


def unit_file(role: str) -> str:
    """The systemd unit file k3s' installer writes for ``role``: its existence means "installed"."""
    return f"/etc/systemd/system/{UNITS[role]}.service"


def k3s_downloads(lab) -> dict[str, Download]:
    """The k3s binary (verified against the release's ``sha256sum-<arch>.txt``) and its installer,
    by their paths in the VM: ``{"/usr/local/bin/k3s": Download(...), INSTALLER_PATH: Download(...)}``."""

    arch = workstation_arch()
    release = lab.k3s_release_url.format(version=lab.k3s_version)
    binary = "k3s" if arch == "amd64" else f"k3s-{arch}"
    return {
        K3S_BIN: Download(f"{release}/{binary}", f"{release}/sha256sum-{arch}.txt"),
        INSTALLER_PATH: Download(lab.k3s_install_url),
    }


def installer_command(role: str, server_url: str | None = None) -> str:
    """The command running the copied k3s installer for ``role`` without downloading anything
    (``INSTALL_K3S_SKIP_DOWNLOAD=true``: the binary is already in place).

    Agents also get ``K3S_URL`` and ``K3S_TOKEN_FILE`` (the token stays in its file); every other
    flag lives in ``/etc/rancher/k3s/config.yaml``.
    """

    if role not in UNITS:
        raise ValueError(f"k3s role must be one of {tuple(UNITS)}, not {role!r}")
    env = ["INSTALL_K3S_SKIP_DOWNLOAD=true"]
    if role == "agent":
        if not server_url or not server_url.startswith("https://"):
            raise ValueError("a k3s agent needs server_url='https://<server>:6443'")
        env += [f"K3S_URL={shlex.quote(server_url)}", f"K3S_TOKEN_FILE={shlex.quote(K3S_TOKEN_PATH)}"]
    env.append(f"INSTALL_K3S_EXEC={role}")
    return f"env {' '.join(env)} sh {shlex.quote(INSTALLER_PATH)}"


def rewrite_kubeconfig(text: str, server: str) -> str:
    """Point every ``server:`` line of a kubeconfig at ``server`` (same rewrite as the
    :class:`~calicolab.facts.k3s.RewrittenFileSha256` fact's ``sed``)."""

    return re.sub(r"(?m)^([ \t]*)server:[ \t].*$", lambda m: f"{m.group(1)}server: {server}", text)


# --- secrets ----------------------------------------------------------------------------


def _secret_commands(dest: str, data: bytes, mode: str, user: str, group: str):
    """The commands making ``dest`` hold ``data`` with ``mode``/owner, never showing the content.

    ``files.put`` would print the content with ``--diff``; this only says that it changes. A new
    file is created empty with its final mode first, so the secret never sits in a looser file.
    """

    remote = host.get_fact(File, path=dest)
    if remote is False:
        yield FunctionCommand(fail_with(f"{dest} exists on {host.name} and is not a regular file"), (), {})
        return
    content_same = bool(remote) and host.get_fact(Sha256File, path=dest) == hashlib.sha256(data).hexdigest()
    meta_same = bool(remote) and (remote.get("mode"), remote.get("user"), remote.get("group")) == (
        int(mode.lstrip("0") or "0"), user, group)
    if content_same and meta_same:
        host.noop(f"{dest} is up to date")
        return
    if state.config.DIFF and not content_same and print_once():
        verb = "modify" if remote else "create"
        host.log(f"Will {verb} {format_text(dest, bold=True)} (content is secret, not shown)", logger.info)
    if not content_same:
        if not remote:
            parent = posixpath.dirname(dest) or "/"
            # The parent only when missing: install -d would reset an existing folder's mode.
            yield StringCommand(
                "{", "[", "-d", QuoteString(parent), "]", "||", "install", "-d", "-m", "0755", QuoteString(parent), ";", "}",
                "&&", "install", "-m", mode, "-o", user, "-g", group, "/dev/null", QuoteString(dest),
            )
        else:
            yield StringCommand("chmod", mode, QuoteString(dest))
        yield FileUploadCommand(io.BytesIO(data), dest)  # the connector picks its own temp file
    yield StringCommand("chown", f"{user}:{group}", QuoteString(dest), "&&", "chmod", mode, QuoteString(dest))


@operation()
def secret_file(path: str, content, mode: str = "0600", user: str = "root", group: str = "root"):
    """
    Upload a local secret to a remote file, only when the remote sha256 differs; never shows it.

    + path: the remote file
    + content: a :class:`calicolab.state.SecretSource`; never the secret itself, so the value stays
      out of operation names, arguments and ``--json``
    + mode / user / group: the remote file's permissions (default 0600 root:root)

    No diff, not even with ``--diff``: only "will create/modify <path> (content is secret)".
    In Prepare (and ``--dry``) the source is only peeked: a secret that does not exist yet
    (a cluster token to generate) is reported as a change and created at Execute.
    The file is created with its final mode before the content is written.

    **Example:**

    .. code:: python

        k3s.secret_file(
            name="Install the k3s join token",
            path="/etc/rancher/k3s/calicolab-token",
            content=LabState(lab.state_path).cluster_token_source(),
            _sudo=True,
        )
    """

    if not isinstance(content, SecretSource):
        raise TypeError("secret_file content must be a SecretSource (never the secret itself)")
    if state.is_executing:
        try:
            data = content.ensure()
        except (StateError, OSError) as e:
            yield FunctionCommand(fail_with(f"{content.description} for {path}: {e}"), (), {})
            return
    else:
        data = content.peek()
        if data is None:
            host.log(f"{content.missing or 'will create ' + content.description}; will upload it to {path}")
            yield FunctionCommand(fail_with(f"{content.description} is not available"), (), {})
            return

    yield from _secret_commands(path, data, mode, user, group)


# --- installation -------------------------------------------------------------------------


@operation()
def installed(role: str, server_url: str | None = None):
    """
    Run the k3s installer copied to the VM (``INSTALLER_PATH``), without downloading: it writes
    the ``k3s`` (server) or ``k3s-agent`` systemd unit and starts it.

    + role: ``"server"`` or ``"agent"``
    + server_url: agents only, ``https://<control lab ip>:6443``

    No change when the role's unit exists. Upgrades need no installer: a new binary is copied
    over the old one and the service restarted. An agent started before its server retries until
    the server answers, so the agents may be installed together with the server.

    **Example:**

    .. code:: python

        k3s.installed(name="Install the k3s agent", role="agent",
                      server_url="https://198.19.0.1:6443", _sudo=True)
    """

    command = installer_command(role, server_url)  # validates before any fact
    unit = unit_file(role)
    if host.get_fact(File, path=unit):
        host.noop(f"k3s {role} is installed ({unit})")
        return
    if state.config.DIFF:
        host.log(f"Will install the k3s {role} ({unit})", logger.info)
    yield StringCommand(command)


# --- waits --------------------------------------------------------------------------------


def _kubectl(host, remaining: float, *args) -> list[str]:
    """stdout lines of ``k3s kubectl ARGS`` on the host, bounded by ``remaining`` seconds.

    A failing or timed-out call is :class:`Transient` (the API is not up yet): the wait goes on.
    """

    seconds = max(1, int(remaining))
    try:
        ok, output = host.run_shell_command(
            StringCommand(K3S_BIN, "kubectl", *args, f"--request-timeout={seconds}s"),
            print_output=False, print_input=False, _sudo=True, _timeout=seconds + 5,
        )
    except TimeoutError as e:  # gevent's Timeout is not an Exception; the connector raises this
        raise Transient(f"no answer within {seconds}s: {e}") from None
    if not ok:
        raise Transient(" ".join(output.stderr_lines)[-500:] or "k3s kubectl failed")
    return output.stdout_lines


def _wait(probe, what: str, timeout: int):
    """FunctionCommand body: ``poll`` ``probe(host, remaining) -> Check`` until done or ``timeout``."""

    def wait(state, host):
        start = time.monotonic()
        result = poll(what, timeout, lambda remaining: probe(host, remaining), log=host.log)
        if result.done:
            host.log(f"{what}: ok after {int(time.monotonic() - start)}s")
            return True
        host.log_styled(
            f"{what}: not reached within {timeout}s on {host.name}; last seen: {result.message[-500:]}",
            fg="red",
            log_func=logger.error,
        )
        return False

    wait.__name__ = f"wait_{re.sub(r'[^a-z0-9]+', '_', what.lower()).strip('_')}"
    return wait


def _readyz(host, remaining: float) -> Check:
    answer = "\n".join(_kubectl(host, remaining, "get", "--raw", "/readyz")).strip()
    return Check(answer == "ok", answer or "(no answer)")


@operation(is_idempotent=True)
def api_ready(timeout: int = 300):
    """
    Wait until the k3s API server answers ``/readyz`` with ``ok`` (run on the server).

    + timeout: seconds before the operation fails (naming the host and the last answer)

    No change when the API is already ready.

    **Example:**

    .. code:: python

        k3s.api_ready(name="Wait for the k3s API", timeout=lab.timeout_k3s_ready, _sudo=True)
    """

    if host.get_fact(K3sApiReadyz) == "ok":
        host.noop("the k3s API is ready")
        return
    if not state.is_executing:
        host.log(f"will wait up to {timeout}s for the k3s API to be ready")
    yield FunctionCommand(_wait(_readyz, "k3s API /readyz", timeout), (), {})


def registered_check(present, names) -> Check:
    """Whether every node of ``names`` is in ``present`` (registered; Ready comes with Calico)."""

    missing = [n for n in names if n not in set(present)]
    if missing:
        return Check(False, f"not registered yet: {', '.join(missing)}")
    return Check(True, f"nodes registered: {', '.join(names)}")


@operation()
def node_registered(names: list[str], timeout: int = 300):
    """
    Wait until the named nodes are registered in the cluster (run on the server).

    + names: node names (the VM names)
    + timeout: seconds before the operation fails

    Does not wait for ``Ready``: without a CNI (Calico comes later) nodes stay ``NotReady``.

    **Example:**

    .. code:: python

        k3s.node_registered(name="Nodes registered", names=["control", "node1", "node2"], _sudo=True)
    """

    check = registered_check(host.get_fact(K3sNodes), names)
    if check.done:
        host.noop(check.message)
        return
    if not state.is_executing:
        host.log(f"will wait up to {timeout}s: {check.message}")

    def probe(host, remaining: float) -> Check:
        return registered_check(node_names(_kubectl(host, remaining, "get", "nodes", "-o", "name")), names)

    yield FunctionCommand(_wait(probe, f"nodes {', '.join(names)} registered", timeout), (), {})


# --- kubeconfig -----------------------------------------------------------------------------


def _fetch_kubeconfig(state, host, state_dir, server):
    """FunctionCommand body (Execute, on control): read the admin kubeconfig through the
    connector, rewrite ``server``, store it 0600 in the local state folder."""

    ok, output = host.run_shell_command(
        StringCommand("cat", QuoteString(K3S_KUBECONFIG_PATH)), print_output=False, print_input=False, _sudo=True,
    )
    text = "\n".join(output.stdout_lines)
    if not ok or "apiVersion" not in text:
        host.log_styled(
            f"cannot read {K3S_KUBECONFIG_PATH} on {host.name}: "
            f"{' '.join(output.stderr_lines)[-300:] or 'empty or not a kubeconfig'}",
            fg="red",
            log_func=logger.error,
        )
        return False
    register_kubeconfig_secrets(text)
    text = rewrite_kubeconfig(text.rstrip("\n") + "\n", server)
    try:
        changed = LabState(state_dir).write_private_if_changed("kubeconfig.yaml", text)
    except (OSError, StateError) as e:
        host.log_styled(f"cannot write the local kubeconfig in {state_dir}: {e}", fg="red", log_func=logger.error)
        return False
    host.log(f"admin kubeconfig {'stored in' if changed else 'unchanged in'} {LabState(state_dir).kubeconfig_path}")
    return True


@operation()
def kubeconfig_fetched(lab):
    """
    Copy the admin kubeconfig from the k3s server into the local state folder
    (``lab.state_path/kubeconfig.yaml``, 0600), with ``server: https://<control lab ip>:6443``.

    + lab: the :class:`calicolab.model.Lab`

    Run it on control (it reads the file through control's connector at Execute, so it is
    ordered after k3s on control). No change when the local copy already matches the remote
    file (compared by sha256, the content is never transferred for the comparison). Never
    shows the content (it holds a client key). Writes nothing locally in Prepare / ``--dry``.

    **Example:**

    .. code:: python

        k3s.kubeconfig_fetched(name="Fetch the admin kubeconfig", lab=lab, _sudo=True)
    """

    local = LabState(lab.state_path)
    server = lab.api_url
    remote_sha = host.get_fact(RewrittenFileSha256, path=K3S_KUBECONFIG_PATH, server=server)
    current = local.read_kubeconfig()
    if remote_sha is not None and current is not None and hashlib.sha256(current).hexdigest() == remote_sha:
        host.noop(f"{local.kubeconfig_path} is up to date")
        return
    if remote_sha is None and not state.is_executing:
        host.log(f"{K3S_KUBECONFIG_PATH} does not exist yet; will fetch it into {local.kubeconfig_path}")
    elif state.config.DIFF:
        host.log(
            f"Will {'update' if current else 'create'} "
            f"{format_text(str(local.kubeconfig_path), bold=True)} (content is secret, not shown)",
            logger.info,
        )
    yield FunctionCommand(_fetch_kubeconfig, (str(local.path), server), {})


@operation()
def kubeconfig_installed(lab, path: str, user: str = "ubuntu"):
    """
    Install the admin kubeconfig from the local state folder on a lab host (host1),
    mode 0600, owned by ``user`` and its group; its folder (``~/.kube``) is created 0700 for ``user``.

    + lab: the :class:`calicolab.model.Lab`
    + path: remote path, e.g. ``/home/ubuntu/.kube/config``
    + user: owner (the group of the same name)

    The local file is read when the operation runs: at Execute it exists because
    :func:`kubeconfig_fetched` ran on control in an earlier phase. Never shows a diff.

    **Example:**

    .. code:: python

        k3s.kubeconfig_installed(name="kubeconfig for ubuntu", lab=lab,
                                 path="/home/ubuntu/.kube/config", _sudo=True)
    """

    parent = path.rsplit("/", 1)[0] or "/"
    source = LabState(lab.state_path).kubeconfig_source()
    # decide everything (and log it) before the first yield
    file_changes = list(secret_file._inner(path, source, mode="0600", user=user, group=user))
    yield from files.directory._inner(path=parent, user=user, group=user, mode="0700")
    yield from file_changes
