"""
Files the deploy puts into the lab VMs: command-line tools copied from the workstation's download
cache (:mod:`calicolab.downloads`: the k3s binary and its installer on the k3s nodes, kubectl and
calicoctl on host1; a file is replaced only when its sha256 differs from the verified download), and
configuration files, rendered or secret, several in one step.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import gevent
from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, FunctionCommand, QuoteString, StringCommand, operation
from pyinfra.api.util import format_text
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files as pyinfra_files

from calicolab.downloads import CachedFile, Download, DownloadCache, DownloadError, outcome, result_of
from calicolab.facts.vm import stamp_command
from calicolab.operations import k3s
from calicolab.operations.common import fail_with, print_once
from calicolab.state import SecretSource

PROFILE_PATH = "/etc/profile.d/calicolab.sh"


def _fetch_all(cache: DownloadCache, items: list[Download]) -> list[CachedFile]:
    """Every download at once (the slowest one sets the time, not their sum)."""
    jobs = [gevent.spawn(outcome, cache.fetch, item) for item in items]
    gevent.joinall(jobs)
    return [result_of(job.value) for job in jobs]


def _start(state, host, cache: DownloadCache, items: list[Download]) -> bool:
    for item in items:
        # a failure is dropped: the step that installs the file downloads it again and reports the cause
        gevent.spawn(outcome, cache.fetch, item)
    return True


@operation(is_idempotent=True)
def downloads_started(files: list[Download]):
    """
    Start the downloads the VMs will need into the workstation cache, in the background, so they
    overlap the VMs' launch. Run it on the workstation, before the launch.

    + files: the :class:`calicolab.downloads.Download` items

    The files go into :meth:`DownloadCache.default`, the cache the deploy installs from. Returns at
    once: :func:`downloads_installed` later waits for a download still under way, and downloads (and
    reports) again one that failed here.

    **Example:**

    .. code:: python

        tools.downloads_started(name="Downloads for the VMs", files=[Download(url, checksum_url)])
    """

    cache = DownloadCache.default()
    missing = [item for item in files if cache.cached(item) is None]
    if not missing:
        host.noop(f"all downloads are in {cache.root}")
        return
    if print_once():
        host.log(f"will download {len(missing)} file(s) into {cache.root} while the VMs start", logger.info)
    yield FunctionCommand(_start, (cache, missing), {})


@operation()
def downloads_installed(files: dict[str, Download], mode: str = "0755", cache_dir: str | None = None):
    """
    Install files from the workstation's download cache, fetching (and verifying) what is missing.

    + files: remote path → :class:`calicolab.downloads.Download` (URL and published checksum URL)
    + mode: the installed files' mode (root-owned)
    + cache_dir: the cache folder (default: :meth:`DownloadCache.default`)

    A file whose remote sha256 equals the verified download is left alone. A new file is uploaded
    beside its destination and renamed into place, so a running binary (k3s) is replaced, never
    overwritten; its sha256, size and time are then recorded in the VM for the deploy's later reads
    (:func:`calicolab.facts.vm.stamp_command`). Downloads happen only while the run executes
    (``--dry`` fetches nothing and reports a change for what is not cached yet); a failed download or
    checksum ends the operation with the URL and the cause, and installs nothing. Needs root
    (``_sudo=True``).

    **Example:**

    .. code:: python

        tools.downloads_installed(
            name="kubectl from the workstation cache",
            files={"/usr/local/bin/kubectl": Download(
                "https://dl.k8s.io/release/v1.35.4/bin/linux/amd64/kubectl",
                "https://dl.k8s.io/release/v1.35.4/bin/linux/amd64/kubectl.sha256")},
            _sudo=True,
        )
    """

    cache = DownloadCache(cache_dir) if cache_dir else DownloadCache.default()
    cached = {dest: cache.cached(item) for dest, item in files.items()}
    missing = [files[dest] for dest, found in cached.items() if found is None]
    if missing and state.is_executing:
        try:
            for item, found in zip(missing, _fetch_all(cache, missing)):
                cached.update({dest: found for dest, other in files.items() if other == item})
        except DownloadError as e:
            yield FunctionCommand(fail_with(str(e)), (), {})
            return

    changes = []
    for dest, found in cached.items():
        remote = host.get_fact(Sha256File, path=dest)
        if found is None:
            changes.append((dest, None, f"will download {files[dest].url} into {cache.root}"))
        elif remote != found.sha256:
            verb = "replace" if remote else "install"
            changes.append((dest, found, f"Will {verb} {format_text(dest, bold=True)} (sha256 {found.sha256[:12]}…)"))
    if not changes:
        host.noop(f"{', '.join(files)} match the verified downloads")
        return
    if print_once():
        for _, _, line in changes:
            host.log(line, logger.info)

    for dest, found, _ in changes:
        if found is None:  # planning only: the executing run downloads it first
            yield FunctionCommand(fail_with(f"{files[dest].url} is not downloaded"), (), {})
            continue
        new = f"{dest}.calicolab-new"
        yield FileUploadCommand(str(found.path), new)  # the connector picks its own temp file
        # one round trip: owner and mode first, then the rename, then the stamp that spares the next
        # runs' reads hashing it again (calicolab.facts.vm.stamp_path)
        yield StringCommand("chown", "root:root", QuoteString(new), "&&", "chmod", mode, QuoteString(new),
                            "&&", "mv", "-f", QuoteString(new), QuoteString(dest), "&&", stamp_command(dest))


@dataclass(frozen=True)
class ConfigFile:
    """A file for :func:`config_files`: rendered text (shown as a diff with ``--diff``) or a
    :class:`calicolab.state.SecretSource` (never shown), with its mode and owners."""

    path: str
    content: str | SecretSource
    mode: str
    user: str = "root"
    group: str = "root"


@operation()
def config_files(files: list[ConfigFile]):
    """
    Put several configuration files in place in one step: ``files.put`` for rendered text (a diff
    with ``--diff``), :func:`calicolab.operations.k3s.secret_file` for secrets (never shown). Their
    folders exist already. Changed when any file changed.

    + files: the :class:`ConfigFile` items

    One step rather than one per file, so VMs with different files (the k3s nodes' join token and
    configuration, host1's BIRD configuration and shell profile) go through it at the same time:
    pyinfra runs one operation at a time on every host that has it. Needs root (``_sudo=True``).

    **Example:**

    .. code:: python

        tools.config_files(
            name="host1: BIRD configuration and shell profile",
            files=[ConfigFile("/etc/bird/bird.conf", bird_conf, "0644"),
                   ConfigFile("/etc/profile.d/calicolab.sh", profile, "0644")],
            _sudo=True,
        )
    """

    # Every file decides (and shows its diff) before the first command is yielded: planning stops
    # at the first yield.
    steps = []
    for item in files:
        if isinstance(item.content, SecretSource):
            steps.append(list(k3s.secret_file._inner(path=item.path, content=item.content, mode=item.mode,
                                                     user=item.user, group=item.group)))
        else:
            steps.append(list(pyinfra_files.put._inner(src=io.StringIO(item.content), dest=item.path, user=item.user,
                                                       group=item.group, mode=item.mode, create_remote_dir=False)))
    for commands in steps:
        yield from commands
