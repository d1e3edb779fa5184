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
import re
import shlex
import time

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, StringCommand, QuoteString, operation
from pyinfra.api.util import format_text

from calicolab.constants import K3S_CONFIG_PATH, K3S_KUBECONFIG_PATH, K3S_TOKEN_PATH
from calicolab.facts.k3s import K3S_BIN, K3sApiReadyz, K3sNodes, K3sVersion, RewrittenFileSha256
from calicolab.kube.waits import Check, Poller
from calicolab.operations.common import fail_with
from calicolab.operations.tools import file_commands
from calicolab.state import LabState, SecretSource, StateError, register_kubeconfig_secrets

ROLES = ("server", "agent")


# --- pure helpers (unit-tested) ---------------------------------------------------------


def server_url(lab) -> str:
    """``https://<control lab ip>:<api port>``."""
    return lab.api_url


def install_command(version: str, role: str, install_url: str, server_url: str | None = None) -> str:
    """The k3s installer command line (run as root).

    ``curl -sfL <install_url>`` piped into ``sh -s -`` with ``INSTALL_K3S_VERSION`` and
    ``INSTALL_K3S_EXEC=<role>``; agents also get ``K3S_URL`` and ``K3S_TOKEN_FILE`` (the token
    stays in its file, never on a command line). Flags live in ``/etc/rancher/k3s/config.yaml``.
    The script is fetched first (``script=$(curl ...)`` under ``set -e``), so a failed download
    fails the command instead of feeding an empty script to ``sh`` (which exits 0).
    """

    if role not in ROLES:
        raise ValueError(f"k3s role must be one of {ROLES}, not {role!r}")
    if not re.fullmatch(r"v[0-9A-Za-z.+-]+", version):
        raise ValueError(f"invalid k3s version {version!r}")
    env = [f"INSTALL_K3S_VERSION={shlex.quote(version)}"]
    if role == "agent":
        if not server_url or not server_url.startswith("https://"):
            raise ValueError("a k3s agent needs server_url='https://<server>:6443'")
        env += [f"K3S_URL={shlex.quote(server_url)}", f"K3S_TOKEN_FILE={shlex.quote(K3S_TOKEN_PATH)}"]
    env.append(f"INSTALL_K3S_EXEC={role}")
    return (
        f"set -e; script=\"$(curl -sfL {shlex.quote(install_url)})\"; "
        f"printf '%s\\n' \"$script\" | {' '.join(env)} sh -s -"
    )


def rewrite_kubeconfig(text: str, server: str) -> str:
    """Point every ``server:`` line of a kubeconfig at ``server`` (same rewrite as the
    :class:`~calicolab.facts.k3s.RewrittenFileSha256` fact's ``sed``)."""

    return re.sub(r"(?m)^([ \t]*)server:[ \t].*$", lambda m: f"{m.group(1)}server: {server}", text)


def _as_source(content) -> SecretSource:
    if isinstance(content, SecretSource):
        return content
    if callable(content):
        def value() -> bytes:
            data = content()
            return data.encode() if isinstance(data, str) else data

        return SecretSource("a secret", peek=value, ensure=value)
    raise TypeError("secret_file content must be a SecretSource or a callable (never the secret itself)")


# --- secrets ----------------------------------------------------------------------------


@operation()
def secret_file(path: str, content, mode: str = "0600", user: str = "root", group: str = "root"):
    """
    Upload a local secret to a remote file, only when the remote sha256 differs; never shows it.

    + path: the remote file
    + content: a :class:`calicolab.state.SecretSource` (or a callable returning str/bytes); never
      the secret itself, so the value stays out of operation names, arguments and ``--json``
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

    source = _as_source(content)
    if state.is_executing:
        try:
            data = source.ensure()
        except (StateError, OSError) as e:
            yield FunctionCommand(fail_with(f"{source.description} for {path}: {e}"), (), {})
            return
    else:
        data = source.peek()
        if data is None:
            host.log(f"{source.missing or 'will create ' + source.description}; will upload it to {path}")
            yield FunctionCommand(fail_with(f"{source.description} is not available"), (), {})
            return

    yield from file_commands(path, data, mode=mode, user=user, group=group, show_diff=False)


# --- configuration, installation, service -----------------------------------------------


@operation()
def config(lab, vm: str, path: str = K3S_CONFIG_PATH):
    """
    Write k3s' configuration file (``/etc/rancher/k3s/config.yaml``, 0600 root) for a VM.

    + lab: the :class:`calicolab.model.Lab`
    + vm: the VM name (``control`` renders a server config, ``node1``/``node2`` an agent config)
    + path: remote path

    Shows a diff with ``--diff`` (the file has no secret: it names the token *file*).
    Its ``did_change()`` tells whether k3s must be restarted.

    **Example:**

    .. code:: python

        cfg = k3s.config(name="Configure k3s", lab=lab, vm="control", _sudo=True)
    """

    from calicolab.render import render_k3s_config

    text = render_k3s_config(lab, vm)
    yield from file_commands(path, text.encode(), mode="0600", user="root", group="root", show_diff=True)


@operation()
def installed(version: str, role: str, install_url: str, server_url: str | None = None):
    """
    Install k3s (or upgrade/downgrade it in place) with the official installer.

    + version: e.g. ``"v1.35.4+k3s1"``; nothing happens when ``k3s --version`` reports it
    + role: ``"server"`` or ``"agent"``
    + install_url: the installer script (``https://get.k3s.io``)
    + server_url: agents only, ``https://<control lab ip>:6443``

    The installer (re)starts the service with ``/etc/rancher/k3s/config.yaml``; agents join with
    ``K3S_TOKEN_FILE`` (the token never appears in the command).

    **Example:**

    .. code:: python

        k3s.installed(
            name="Install k3s agent",
            version="v1.35.4+k3s1",
            role="agent",
            install_url="https://get.k3s.io",
            server_url="https://198.19.0.1:6443",
            _sudo=True,
        )
    """

    command = install_command(version, role, install_url, server_url)  # validates before any fact
    current = host.get_fact(K3sVersion)
    if current == version:
        host.noop(f"k3s {version} is installed")
        return
    if current:
        host.log(f"Will upgrade k3s {current} -> {version} ({role})", logger.info)
    elif state.config.DIFF:
        host.log(f"Will install k3s {version} ({role})", logger.info)
    yield StringCommand(command)


# --- waits --------------------------------------------------------------------------------


def _run(host, *args, timeout: int = 30):
    ok, output = host.run_shell_command(
        StringCommand(K3S_BIN, *args), print_output=False, print_input=False, _sudo=True,
        _timeout=timeout,
    )
    stdout = "\n".join(output.stdout_lines).strip()
    stderr = "\n".join(output.stderr_lines).strip()
    return ok, stdout, stderr


def _wait(check, what: str, timeout: int):
    """FunctionCommand body: poll ``check(host) -> (done, last_output)`` until done or timeout
    (the same backoff and progress lines as the Kubernetes waits)."""

    def wait(state, host):
        def probe() -> Check:
            try:
                done, last = check(host)
            except Exception as e:  # connector hiccup: keep trying until the deadline
                done, last = False, f"{type(e).__name__}: {e}"
            return Check(done, last[-500:] or "(none)")

        start = time.monotonic()
        result = Poller(what, timeout, host.log).run(probe)
        if result.done:
            host.log(f"{what}: ok after {int(time.monotonic() - start)}s")
            return True
        host.log_styled(
            f"{what}: not reached within {timeout}s on {host.name}; last output: {result.message}",
            fg="red",
            log_func=logger.error,
        )
        return False

    wait.__name__ = f"wait_{re.sub(r'[^a-z0-9]+', '_', what.lower()).strip('_')}"
    return wait


def _readyz(host):
    ok, stdout, stderr = _run(host, "kubectl", "get", "--raw", "/readyz", "--request-timeout=10s", timeout=20)
    return ok and stdout == "ok", stdout or stderr


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


def _nodes_check(names):
    wanted = list(names)

    def check(host):
        ok, stdout, stderr = _run(host, "kubectl", "get", "nodes", "-o", "name", "--request-timeout=10s", timeout=20)
        present = {line[len("node/"):] for line in stdout.splitlines() if line.startswith("node/")}
        missing = [n for n in wanted if n not in present]
        if ok and not missing:
            return True, stdout
        return False, (f"missing {', '.join(missing)}; " if ok else "") + (stdout or stderr)

    return check


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

    present = set(host.get_fact(K3sNodes))
    missing = [n for n in names if n not in present]
    if not missing:
        host.noop(f"nodes registered: {', '.join(names)}")
        return
    if not state.is_executing:
        host.log(f"will wait up to {timeout}s for node(s) to register: {', '.join(missing)}")
    yield FunctionCommand(_wait(_nodes_check(names), f"nodes {', '.join(names)} registered", timeout), (), {})


# --- kubeconfig -----------------------------------------------------------------------------


def _fetch_kubeconfig(state, host, state_dir, server, remote_path):
    """FunctionCommand body (Execute, on control): read the admin kubeconfig through the
    connector, rewrite ``server``, store it 0600 in the local state folder."""

    ok, output = host.run_shell_command(
        StringCommand("cat", QuoteString(remote_path)), print_output=False, print_input=False, _sudo=True,
    )
    text = "\n".join(output.stdout_lines)
    if not ok or "apiVersion" not in text:
        host.log_styled(
            f"cannot read {remote_path} on {host.name}: "
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
def kubeconfig_fetched(lab, remote_path: str = K3S_KUBECONFIG_PATH):
    """
    Copy the admin kubeconfig from the k3s server into the local state folder
    (``lab.state_path/kubeconfig.yaml``, 0600), with ``server: https://<control lab ip>:6443``.

    + lab: the :class:`calicolab.model.Lab`
    + remote_path: the server's kubeconfig

    Run it on control (it reads the file through control's connector at Execute, so it is
    ordered after k3s on control). No change when the local copy already matches the remote
    file (compared by sha256, the content is never transferred for the comparison). Never
    shows the content (it holds a client key). Writes nothing locally in Prepare / ``--dry``.

    **Example:**

    .. code:: python

        k3s.kubeconfig_fetched(name="Fetch the admin kubeconfig", lab=lab, _sudo=True)
    """

    local = LabState(lab.state_path)
    server = server_url(lab)
    remote_sha = host.get_fact(RewrittenFileSha256, path=remote_path, server=server)
    current = local.read_kubeconfig()
    if remote_sha is not None and current is not None and hashlib.sha256(current).hexdigest() == remote_sha:
        host.noop(f"{local.kubeconfig_path} is up to date")
        return
    if remote_sha is None and not state.is_executing:
        host.log(f"{remote_path} does not exist yet; will fetch it into {local.kubeconfig_path}")
    elif state.config.DIFF:
        host.log(
            f"Will {'update' if current else 'create'} "
            f"{format_text(str(local.kubeconfig_path), bold=True)} (content is secret, not shown)",
            logger.info,
        )
    yield FunctionCommand(_fetch_kubeconfig, (str(local.path), server, remote_path), {})


@operation()
def kubeconfig_installed(lab, path: str, user: str = "ubuntu", group: str | None = None):
    """
    Install the admin kubeconfig from the local state folder on a lab host (host1),
    mode 0600, owned by ``user``; its folder (``~/.kube``) is created 0700 for ``user``.

    + lab: the :class:`calicolab.model.Lab`
    + path: remote path, e.g. ``/home/ubuntu/.kube/config``
    + user / group: owner (group defaults to ``user``)

    The local file is read when the operation runs: at Execute it exists because
    :func:`kubeconfig_fetched` ran on control in an earlier phase. Never shows a diff.

    **Example:**

    .. code:: python

        k3s.kubeconfig_installed(name="kubeconfig for ubuntu", lab=lab,
                                 path="/home/ubuntu/.kube/config", _sudo=True)
    """

    group = group or user
    parent = path.rsplit("/", 1)[0] or "/"
    source = LabState(lab.state_path).kubeconfig_source()
    # decide everything (and log it) before the first yield
    file_changes = list(secret_file._inner(path, source, mode="0600", user=user, group=group))
    if _needs_dir(parent, user):
        yield StringCommand("install", "-d", "-m", "0700", "-o", user, "-g", group, QuoteString(parent))
    yield from file_changes


def _needs_dir(parent: str, user: str) -> bool:
    from pyinfra.facts.files import Directory

    info = host.get_fact(Directory, path=parent)
    return not info or info.get("user") != user or info.get("mode") != 700
