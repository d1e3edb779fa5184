"""The workstation's download cache: k3s, its installer, kubectl and calicoctl are fetched once,
verified against their published checksums, and copied into the VMs from here.

The cache lives in ``$XDG_CACHE_HOME/calicolab/downloads`` (``~/.cache/calicolab/downloads`` when
the variable is unset), mode 0700. It is not the lab's state folder: a teardown keeps it, so the
next build downloads nothing again. Delete the folder to free the space.

Each file is stored under a folder named after its URL, beside a ``.sha256`` file holding the digest
it was verified against, with the file's size and modification time when it was. A cached file whose
size or time changed since is hashed again before use: one whose digest no longer matches is
downloaded again. A download in progress is written to
``.<name>.<pid>.part`` and renamed once verified; one left by a run that was killed is removed by
the next download of that file.

Example::

    cache = DownloadCache.default()
    item = cache.fetch(Download("https://dl.k8s.io/release/v1.35.4/bin/linux/amd64/kubectl",
                                "https://dl.k8s.io/release/v1.35.4/bin/linux/amd64/kubectl.sha256"))
    item.path, item.sha256
"""

from __future__ import annotations

import hashlib
import os
import platform
import posixpath
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import gevent

#: ``uname -m`` → the architecture name of Go/Kubernetes release files
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
#: seconds a download may stall before it fails
TIMEOUT = 60
CHUNK = 1 << 20
FOLDER_MODE = 0o700
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class DownloadError(Exception):
    """A download failed or did not match its published checksum (the message names the URL)."""


class ChecksumError(DownloadError):
    """A checksum file cannot be parsed or does not list the wanted file."""


def workstation_arch(machine: str | None = None) -> str:
    """The release-file architecture of this workstation; Multipass VMs run the same one.

    ``workstation_arch("aarch64") == "arm64"``; raises :class:`DownloadError` for other machines.
    """
    machine = machine or platform.machine()
    try:
        return ARCHES[machine.strip().lower()]
    except KeyError:
        raise DownloadError(f"unsupported workstation architecture {machine!r} (need x86_64 or arm64)") from None


def parse_sha256_file(text: str, filename: str) -> str:
    """The sha256 of ``filename`` in a published checksum file.

    Either a bare digest (kubectl's ``<binary>.sha256``) or ``sha256sum`` lines ``<hex>  <name>``
    (k3s' ``sha256sum-<arch>.txt``, calicoctl's ``SHA256SUMS``; ``<name>`` matches on its basename).
    ``parse_sha256_file("ab…  calicoctl-linux-amd64", "calicoctl-linux-amd64") == "ab…"``.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) == 1 and _HEX64.match(lines[0]):
        return lines[0].lower()
    for line in lines:
        parts = line.split(None, 1)
        if len(parts) == 2 and _HEX64.match(parts[0]):
            name = parts[1].strip().lstrip("*")
            if name == filename or posixpath.basename(name) == filename:
                return parts[0].lower()
    raise ChecksumError(f"no sha256 digest for {filename!r} in the checksum file")


@dataclass(frozen=True)
class Download:
    """A file to fetch: its URL and the URL of its published checksum file (None: none is published,
    e.g. k3s' install script; its digest is then recorded at the first download)."""

    url: str
    checksum_url: str | None = None

    @property
    def filename(self) -> str:
        return posixpath.basename(urllib.parse.urlsplit(self.url).path) or "download"


@dataclass(frozen=True)
class CachedFile:
    path: Path
    sha256: str


def _ssl_context() -> ssl.SSLContext:
    # The system's CAs (and SSL_CERT_FILE, e.g. for a company mirror), plus certifi's bundle where
    # the system has none (python.org builds on macOS).
    context = ssl.create_default_context()
    try:
        import certifi

        context.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    return context


class DownloadCache:
    """Verified downloads in a folder on the workstation (see the module comment)."""

    _locks: dict[str, threading.Lock] = {}
    _verified: dict[tuple[str, int, int], str] = {}

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def default(cls) -> "DownloadCache":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return cls(Path(base) / "calicolab" / "downloads")

    def _paths(self, item: Download) -> tuple[Path, Path]:
        folder = self.root / hashlib.sha256(item.url.encode()).hexdigest()[:16]
        return folder / item.filename, folder / (item.filename + ".sha256")

    def cached(self, item: Download) -> CachedFile | None:
        """The cached copy of ``item`` when it still matches its recorded digest; no network. It is
        hashed again only when its size or modification time changed since it was last verified."""
        path, digest_path = self._paths(item)
        try:
            recorded = digest_path.read_text().split()
            info = path.stat()
        except OSError:
            return None
        if not recorded:
            return None
        expected, stamp = recorded[0], [str(info.st_size), str(info.st_mtime_ns)]
        if recorded[1:] == stamp:
            return CachedFile(path, expected)
        key = (str(path), info.st_mtime_ns, info.st_size)
        actual = self._verified.get(key)
        if actual is None:
            actual = _sha256_of(path)
            self._verified[key] = actual
        if actual != expected:
            return None
        _record_digest(digest_path, expected, path)
        return CachedFile(path, expected)

    def fetch(self, item: Download) -> CachedFile:
        """The cached copy, downloaded and verified first when missing or corrupt (once per URL at a
        time: concurrent callers wait for the same download)."""
        with self._locks.setdefault(item.url, threading.Lock()):
            found = self.cached(item)
            if found:
                return found
            path, digest_path = self._paths(item)
            path.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
            for folder in (self.root.parent, self.root, path.parent):
                os.chmod(folder, FOLDER_MODE)
            digest_path.unlink(missing_ok=True)
            _remove_abandoned_parts(path)
            # the checksum file and the file itself at the same time
            published = gevent.spawn(outcome, _read_text, item.checksum_url) if item.checksum_url else None
            temp = path.with_name(f".{path.name}.{os.getpid()}.part")
            try:
                actual = _download(item.url, temp)
                if published is not None:
                    expected = parse_sha256_file(result_of(published.get()), item.filename)
                    if actual != expected:
                        raise DownloadError(
                            f"{item.url} does not match its published checksum ({item.checksum_url}): "
                            f"expected {expected}, got {actual}; nothing was installed")
                os.replace(temp, path)
            finally:
                if published is not None:
                    published.kill()
                temp.unlink(missing_ok=True)
            _record_digest(digest_path, actual, path)
            return CachedFile(path, actual)


def _record_digest(digest_path: Path, digest: str, path: Path) -> None:
    """Write ``<digest> <size> <mtime_ns>`` of the verified ``path`` (the size and time tell a later
    run that the file is as verified, without hashing some 200 MB of binaries on every run). Best
    effort: a cache that cannot be written is only hashed again."""
    info = path.stat()
    temp = digest_path.with_name(f".{digest_path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(f"{digest} {info.st_size} {info.st_mtime_ns}\n")
        os.replace(temp, digest_path)
    except OSError:
        temp.unlink(missing_ok=True)


def _remove_abandoned_parts(path: Path) -> None:
    """Remove the partial downloads of ``path`` that a killed run left (``.<name>.<pid>.part`` of a
    process that is gone); another live run's download stays. POSIX only: Windows has no signal 0."""
    if os.name != "posix":
        return
    prefix = f".{path.name}."
    for part in path.parent.glob(f"{prefix}*.part"):
        pid = part.name[len(prefix):-len(".part")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's process: alive


def outcome(function, *args):
    """Run ``function`` in a greenlet: its result, or the DownloadError it raised (a greenlet that
    dies of an exception has gevent print a traceback)."""
    try:
        return function(*args)
    except DownloadError as error:
        return error


def result_of(value):
    """The value an :func:`outcome` greenlet returned, raising the DownloadError it stood for."""
    if isinstance(value, DownloadError):
        raise value
    return value


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _open(url: str):
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT, context=_ssl_context())
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {url}: {reason}") from None


def _read_text(url: str) -> str:
    with _open(url) as response:
        try:
            return response.read().decode("utf-8", "replace")
        except OSError as e:
            raise DownloadError(f"cannot download {url}: {e}") from None


def _download(url: str, dest: Path) -> str:
    """Stream ``url`` into ``dest`` (0600) and return its sha256."""
    digest = hashlib.sha256()
    with _open(url) as response, open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        try:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        except OSError as e:
            raise DownloadError(f"cannot download {url}: {e}") from None
    return digest.hexdigest()
