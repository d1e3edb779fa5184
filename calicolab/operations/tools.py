"""
Files and command-line tools inside the lab VMs: checksum-verified binary downloads (kubectl,
calicoctl on host1) and managed files whose content may be shown as a diff or must stay hidden.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import shlex

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand, QuoteString, operation
from pyinfra.api.util import format_text
from pyinfra.facts.files import File, FileContents, Sha256File
from pyinfra.facts.server import Arch
from pyinfra.operations.util.files import generate_color_diff

from calicolab.facts.k3s import ToolVersion
from calicolab.operations.common import fail_with, print_once

#: ``uname -m`` → the architecture name used in kubectl / calicoctl download URLs.
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class ChecksumError(ValueError):
    """A checksum file cannot be parsed or does not list the wanted file."""


# --- pure helpers (unit-tested) ---------------------------------------------------------


def go_arch(machine: str | None) -> str | None:
    """``uname -m`` output → ``amd64`` / ``arm64`` (None if unknown or missing)."""

    if not machine:
        return None
    return ARCHES.get(machine.strip())


def parse_sha256_file(text: str, filename: str) -> str:
    """The expected sha256 of ``filename`` from an upstream checksum file.

    Supports both formats:

    * a bare digest (kubectl's ``<url>.sha256``: the file holds only the hex digest);
    * ``sha256sum`` / ``SHA256SUMS`` lines ``<hex>  <name>`` or ``<hex> *<name>`` (calicoctl's
      release ``SHA256SUMS``); ``<name>`` matches on its basename, so ``bin/calicoctl-linux-amd64``
      matches ``calicoctl-linux-amd64``.

    Raises :class:`ChecksumError` when no digest for ``filename`` is found.
    """

    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) == 1 and _HEX64.match(lines[0]):
        return lines[0].lower()
    for line in lines:
        parts = line.split(None, 1)
        if len(parts) != 2 or not _HEX64.match(parts[0]):
            continue
        name = parts[1].strip().lstrip("*")
        if name == filename or posixpath.basename(name) == filename:
            return parts[0].lower()
    raise ChecksumError(f"no sha256 digest for {filename!r} in the checksum file")


def format_url(template: str, version: str, arch: str) -> str:
    return template.format(version=version, arch=arch)


def install_checked_command(url: str, expected_sha256: str, dest: str, mode: str = "0755") -> str:
    """Shell script: download ``url`` to a temp file, verify it against ``expected_sha256``
    (fails with "checksum mismatch" otherwise), install it to ``dest`` with ``mode``, root-owned."""

    if not _HEX64.match(expected_sha256):
        raise ChecksumError(f"invalid sha256 digest {expected_sha256!r}")
    q = shlex.quote
    return (
        "set -e; tmp=$(mktemp); trap 'rm -f \"$tmp\"' EXIT; "
        f"curl -fsSL --retry 3 --connect-timeout 20 -o \"$tmp\" {q(url)}; "
        "actual=$(sha256sum \"$tmp\" | cut -d' ' -f1); "
        f"if [ \"$actual\" != {q(expected_sha256.lower())} ]; then "
        f"echo \"checksum mismatch: expected {expected_sha256.lower()}, got $actual\" >&2; "
        "exit 1; fi; "
        f"install -D -m {q(mode)} -o root -g root \"$tmp\" {q(dest)}"
    )


def _output_text(output) -> str:
    return output.output


def _stdout_text(output) -> str:
    return "\n".join(output.stdout_lines)


# --- managed files ----------------------------------------------------------------------


def file_commands(
    dest: str,
    content: bytes,
    mode: str = "0644",
    user: str = "root",
    group: str = "root",
    show_diff: bool = True,
):
    """Generator of the commands making ``dest`` hold ``content`` (body of a file operation).

    Decides from facts before its first yield and logs "No change" through ``host.noop``.
    With ``show_diff`` and ``--diff`` it prints a unified diff once per run; with
    ``show_diff=False`` it only says that the (hidden) content will change. The file is created
    empty with the target mode/owner *before* the upload, so its content never exists with a
    looser mode (the upload overwrites in place).
    """

    mode_int = int(mode, 8)
    remote = host.get_fact(File, path=dest)
    if remote is False:
        yield FunctionCommand(fail_with(f"{dest} exists on {host.name} and is not a regular file"), (), {})
        return

    if remote:
        remote_sha = host.get_fact(Sha256File, path=dest)
        content_same = remote_sha == hashlib.sha256(content).hexdigest()
        meta_same = (
            remote.get("mode") == int(oct(mode_int)[2:])
            and remote.get("user") == user
            and remote.get("group") == group
        )
    else:
        content_same = meta_same = False

    if content_same and meta_same:
        host.noop(f"{dest} is up to date")
        return

    if state.config.DIFF and print_once():
        verb = "modify" if remote else "create"
        if not show_diff:
            if not content_same:
                host.log(f"Will {verb} {format_text(dest, bold=True)} (content is secret, not shown)", logger.info)
        elif not content_same:
            host.log(f"Will {verb} {format_text(dest, bold=True)}", logger.info)
            current_lines: list[str] = []
            if remote:
                current = host.get_fact(FileContents, path=dest) or []
                current_lines = [line + "\n" for line in current]
            desired_lines = content.decode("utf-8", "replace").splitlines(keepends=True)
            for line in generate_color_diff(current_lines, desired_lines):
                logger.info("  %s", line)
            logger.info("")
        if not meta_same and remote:
            host.log(f"Will set {dest} to mode {mode} owner {user}:{group}", logger.info)

    if not content_same:
        parent = posixpath.dirname(dest) or "/"
        if not remote:
            # an empty file with the final mode and owner; the upload then fills it in place.
            # The parent is created only when missing: install -d would reset an existing folder's mode.
            yield StringCommand(
                "{", "[", "-d", QuoteString(parent), "]", "||", "install", "-d", "-m", "0755", QuoteString(parent), ";", "}",
                "&&",
                "install", "-m", mode, "-o", user, "-g", group, "/dev/null", QuoteString(dest),
            )
        else:
            yield StringCommand("chmod", mode, QuoteString(dest))
        yield FileUploadCommand(
            io.BytesIO(content),
            dest,
            remote_temp_filename=host.get_temp_filename(dest),
        )
    yield StringCommand("chown", f"{user}:{group}", QuoteString(dest))
    yield StringCommand("chmod", mode, QuoteString(dest))


@operation()
def rendered_file(dest: str, content: str, mode: str = "0644", user: str = "root", group: str = "root"):
    """
    Make a remote file hold a rendered text (like ``files.put`` with a string), with a diff
    in ``--diff`` (also for brand-new files and in ``--dry``).

    + dest: remote path (its folder is created if missing)
    + content: the text
    + mode / user / group: the file's permissions and owner

    **Example:**

    .. code:: python

        tools.rendered_file(
            name="Write BIRD configuration",
            dest="/etc/bird/bird.conf",
            content=render_bird_conf(lab),
            mode="0644",
            _sudo=True,
        )
    """

    yield from file_commands(dest, content.encode(), mode=mode, user=user, group=group, show_diff=True)


# --- checked binaries -------------------------------------------------------------------


def _install_binary(state, host, tool, url, sha256_url, filename, dest, version, mode):
    """FunctionCommand body (Execute): fetch the checksum file, parse it, download + verify +
    install in the VM. Returns False (clean op error) on any failure, naming host and cause."""

    ok, output = host.run_shell_command(
        StringCommand("curl", "-fsSL", "--retry", "3", "--connect-timeout", "20", QuoteString(sha256_url)),
        print_output=False,
        print_input=state.print_input,
    )
    if not ok:
        host.log_styled(
            f"{tool} {version}: cannot download the checksum file {sha256_url}: "
            f"{_output_text(output)[-500:]}",
            fg="red",
            log_func=logger.error,
        )
        return False
    try:
        expected = parse_sha256_file(_stdout_text(output), filename)
    except ChecksumError as e:
        host.log_styled(f"{tool} {version}: {sha256_url}: {e}", fg="red", log_func=logger.error)
        return False

    ok, output = host.run_shell_command(
        StringCommand(install_checked_command(url, expected, dest, mode)),
        print_output=state.print_output,
        print_input=state.print_input,
        _sudo=True,
    )
    if not ok:
        host.log_styled(
            f"{tool} {version}: install from {url} failed: {_output_text(output)[-500:]}",
            fg="red",
            log_func=logger.error,
        )
        return False
    host.log(f"installed {tool} {version} to {dest} (sha256 {expected[:12]}… verified)")
    return True


@operation()
def binary(tool: str, url: str, sha256_url: str, dest: str, version: str, mode: str = "0755"):
    """
    Install a single-file binary from an upstream URL, verified against the upstream sha256.

    + tool: ``"kubectl"`` or ``"calicoctl"`` (selects the version check, see
      :class:`calicolab.facts.k3s.ToolVersion`); named ``tool`` because ``name`` is pyinfra's
    + url: download URL template with ``{version}`` and ``{arch}`` (``amd64`` / ``arm64`` from
      ``uname -m``)
    + sha256_url: checksum URL template (same placeholders): either a bare digest file
      (kubectl's ``.sha256``) or a ``SHA256SUMS`` file with ``<hex>  <filename>`` lines
    + dest: install path (mode ``mode``, root-owned)
    + version: the wanted version, e.g. ``"v1.35.4"``

    Idempotent: nothing happens when the installed binary reports ``version``. The download and
    the check run in the VM (curl into a temp file, ``sha256sum``, ``install``); a digest
    mismatch fails the operation and leaves ``dest`` untouched. Needs root (``_sudo=True``).

    **Example:**

    .. code:: python

        tools.binary(
            name="Install kubectl on host1",
            tool="kubectl",
            url="https://dl.k8s.io/release/{version}/bin/linux/{arch}/kubectl",
            sha256_url="https://dl.k8s.io/release/{version}/bin/linux/{arch}/kubectl.sha256",
            dest="/usr/local/bin/kubectl",
            version="v1.35.4",
            _sudo=True,
        )
    """

    installed = host.get_fact(ToolVersion, tool=tool, path=dest)
    if installed == version:
        host.noop(f"{tool} {version} is installed at {dest}")
        return

    machine = host.get_fact(Arch)
    arch = go_arch(machine)
    if arch is None:
        if not state.is_executing:
            host.log(f"{tool}: architecture not known yet (VM not inspectable); assuming {version} will be installed")
            yield FunctionCommand(fail_with(f"{tool}: unknown architecture"), (), {})
            return
        yield FunctionCommand(
            fail_with(f"{tool}: unsupported architecture {machine!r} on {host.name} (need x86_64 or aarch64)"),
            (),
            {},
        )
        return

    real_url = format_url(url, version, arch)
    real_sha_url = format_url(sha256_url, version, arch)
    filename = posixpath.basename(real_url)
    if state.config.DIFF and print_once():
        host.log(
            f"Will {'upgrade' if installed else 'install'} {tool} "
            f"{installed + ' -> ' if installed else ''}{version} ({real_url}) at {dest}",
            logger.info,
        )
    yield FunctionCommand(
        _install_binary,
        (tool, real_url, real_sha_url, filename, dest, version, mode),
        {},
    )


# --- profile --------------------------------------------------------------------------

PROFILE_PATH = "/etc/profile.d/calicolab.sh"
