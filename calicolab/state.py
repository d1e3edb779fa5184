"""The local state folder on the workstation (``lab.state_path``) and secret hygiene.

The folder holds what the lab needs to remember between runs and that must stay private:

* ``cluster-token``: the k3s join token, generated once per lab with :mod:`secrets`;
* ``kubeconfig.yaml``: the admin kubeconfig fetched from control (it carries a client key);
* ``calicolab-state``: the marker that says calicolab made this folder. Teardown removes a folder
  only when it carries the marker, and then only calicolab's own files in it;
* ``run.lock``: held (``flock``) by the run that is changing the lab, with its pid and start time.

The folder is mode 0700 and every file in it 0600. Files are written atomically (a temporary
name created with ``O_CREAT | O_EXCL`` and mode 0600, then renamed), so a reader never sees a
half-written file and a file never exists with a looser mode, not even for a moment.

Secrets never go to the output: every secret this module reads or generates is registered with
:data:`SECRET_FILTER`, a :class:`logging.Filter` that :func:`install_secret_filter` puts on
pyinfra's logger (and its handlers) and that replaces any registered secret with ``***``.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import logging
import os
import re
import shutil
import secrets as _secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

logger = logging.getLogger(__name__)

FOLDER_MODE = 0o700
FILE_MODE = 0o600

TOKEN_FILE = "cluster-token"
KUBECONFIG_FILE = "kubeconfig.yaml"
MARKER_FILE = "calicolab-state"
LOCK_FILE = "run.lock"
#: the diagnostics bundles (calicolab.diagnose), one folder per failed or diagnosed run
DIAGNOSTICS_DIR = "diagnostics"
#: Everything calicolab writes into the state folder (teardown removes these and nothing else).
OWN_FILES = (TOKEN_FILE, KUBECONFIG_FILE, LOCK_FILE, MARKER_FILE)
_TEMP_FILE_RE = re.compile(r"^\.[A-Za-z0-9._-]+\.[0-9a-f]{12}\.tmp$")
MARKER_TEXT = (
    "This folder holds one calicolab lab's private state (join token, admin kubeconfig).\n"
    "`pyinfra inventory.py teardown.py` removes calicolab's files here and nothing else.\n"
)

# 24 random bytes = 48 hex characters. k3s accepts a short (password-style) token for the
# first server; agents join with the same short token (k3s-io/docs ``docs/cli/token.md``).
TOKEN_BYTES = 24
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._:-]{16,}$")

MASK = "***"


class StateError(Exception):
    """The local state folder or one of its files cannot be used (message names the path)."""


class LabBusy(StateError):
    """Another calicolab run holds the lab's lock; ``holder`` is its ``{"pid", "started"}``."""

    def __init__(self, path: Path, holder: dict[str, str]):
        self.holder = holder
        super().__init__(
            f"another calicolab run (pid {holder.get('pid', '?')}, started {holder.get('started', '?')}) holds "
            f"the lab ({path}): wait for it to finish, or stop it, then run again"
        )


def is_own_file(name: str) -> bool:
    """True for a file calicolab writes into the state folder (its files and their temporary copies)."""
    return name in OWN_FILES or bool(_TEMP_FILE_RE.match(name))


def marker_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as (or removed as) calicolab's state folder, or None.

    A folder is calicolab's when it carries the marker. A folder without it is accepted only while it
    holds nothing but calicolab's own files (a state folder from before the marker existed).
    """
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink():
        return f"{path} is a symlink; give the folder itself"
    if not path.is_dir():
        return f"{path} exists and is not a folder"
    if (path / MARKER_FILE).is_file():
        return None
    try:
        foreign = sorted(name for name in os.listdir(path) if not is_own_file(name))
    except OSError as e:
        return f"{path} cannot be read: {e.strerror}"
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return (
            f"{path} already exists and was not made by calicolab (no {MARKER_FILE} marker; it holds {shown}); "
            "choose a new folder, e.g. the default .calicolab"
        )
    return None


# --- Masking ---------------------------------------------------------------------------


def mask(text: str, secrets: Iterable[str]) -> str:
    """Return ``text`` with every occurrence of every (non-empty) secret replaced by ``***``.

    Longer secrets are replaced first, so a secret that contains another one is masked whole.

    .. code:: python

        mask("token=abc123", ["abc123"])  # -> "token=***"
    """

    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """A logging filter that masks known secrets in log records (message and arguments).

    It never drops a record: it rewrites ``record.msg`` to the fully formatted, masked message
    and clears ``record.args``. Secrets are added with :meth:`add` (this module adds the cluster
    token and the kubeconfig's keys as soon as it reads or generates them).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("calicolab-secrets")
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | bytes | None) -> None:
        if isinstance(secret, bytes):
            secret = secret.decode("utf-8", "replace")
        if secret:
            secret = secret.strip()
            # Very short values would mask ordinary words: refuse them.
            if len(secret) >= 8:
                self._secrets.add(secret)

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: mask what we can
            message = str(record.msg)
        masked = mask(message, self._secrets)
        if masked != message:
            record.msg = masked
            record.args = ()
        if record.exc_text:
            record.exc_text = mask(record.exc_text, self._secrets)
        return True


#: The process-wide filter; every secret handled by :class:`LabState` is registered here.
SECRET_FILTER = SecretFilter()


def install_secret_filter() -> SecretFilter:
    """Install :data:`SECRET_FILTER` on pyinfra's loggers and on their handlers (idempotent).

    A filter on a logger only sees records logged through that very logger; the handlers'
    filter also covers records propagated from child loggers (``pyinfra.api...``). Call it from
    the deploy (after pyinfra's CLI set up its handlers) and again whenever handlers change.
    """

    for each in (logging.getLogger("pyinfra"), logging.getLogger("pyinfra_cli")):
        if SECRET_FILTER not in each.filters:
            each.addFilter(SECRET_FILTER)
        for handler in each.handlers:
            if SECRET_FILTER not in handler.filters:
                handler.addFilter(SECRET_FILTER)
    return SECRET_FILTER


# --- Secret sources -----------------------------------------------------------------------


@dataclass(frozen=True)
class SecretSource:
    """A local secret that an operation uploads without ever holding it in its arguments.

    * ``description``: words for logs ("the k3s cluster token"); never the value;
    * ``peek()``: the current value (bytes) or ``None`` if it does not exist yet. Never writes:
      safe during Prepare and ``--dry``;
    * ``ensure()``: the value, creating it if needed (generating a token is a change, so call it
      only while executing). Raises :class:`StateError` if it cannot be produced;
    * ``missing``: what will happen when ``peek()`` finds nothing ("will generate ...").
    """

    description: str
    peek: Callable[[], bytes | None]
    ensure: Callable[[], bytes]
    missing: str = ""

    def __repr__(self) -> str:  # shown in op args / --json plans: never the value
        return f"<secret: {self.description}>"

    __str__ = __repr__


# --- The state folder ---------------------------------------------------------------------


class LabState:
    """The lab's local state folder (``lab.state_path``).

    .. code:: python

        state = LabState(lab.state_path)
        token = state.cluster_token()          # generated once, then stable
        state.write_private("kubeconfig.yaml", text)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser().absolute()

    def __repr__(self) -> str:
        return f"LabState({str(self.path)!r})"

    # -- paths
    @property
    def token_path(self) -> Path:
        return self.path / TOKEN_FILE

    @property
    def kubeconfig_path(self) -> Path:
        return self.path / KUBECONFIG_FILE

    # -- folder
    def ensure(self) -> Path:
        """Create the folder with mode 0700, or tighten an existing folder to 0700."""

        if self.path.is_symlink():
            raise StateError(f"state folder {self.path} is a symlink; refusing to use it")
        try:
            self.path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        except FileExistsError:
            raise StateError(f"state folder {self.path} exists and is not a directory") from None
        if not self.path.is_dir():
            raise StateError(f"state folder {self.path} exists and is not a directory")
        problem = marker_problem(self.path)
        if problem:
            raise StateError(problem)
        marker = self.path / MARKER_FILE
        if not marker.exists():
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
            with os.fdopen(fd, "w") as f:
                f.write(MARKER_TEXT)
        current = stat.S_IMODE(self.path.stat().st_mode)
        if current != FOLDER_MODE:
            os.chmod(self.path, FOLDER_MODE)
            logger.info("state folder %s: mode %04o tightened to %04o", self.path, current, FOLDER_MODE)
        return self.path

    def own_files(self) -> list[Path]:
        """calicolab's files in the folder (what :meth:`remove` deletes); empty without the marker."""
        if marker_problem(self.path) or not self.path.is_dir() or not (self.path / MARKER_FILE).is_file():
            return []
        return sorted(self.path / name for name in os.listdir(self.path) if is_own_file(name))

    def remove(self) -> list[str]:
        """Teardown: delete calicolab's files, then the folder if nothing else is left in it.

        Only a folder with the marker is touched, and only the files calicolab writes; anything else
        stays, and so does the folder then. Returns the names of what was left in place.
        """
        problem = marker_problem(self.path)
        if problem:
            raise StateError(f"not removing the state folder: {problem}")
        if not self.path.exists():
            return []
        marker = self.path / MARKER_FILE
        for path in self.own_files():
            if path != marker:
                path.unlink(missing_ok=True)
        bundles = self.path / DIAGNOSTICS_DIR
        if bundles.is_dir() and not bundles.is_symlink():
            shutil.rmtree(bundles)
        left = sorted(name for name in os.listdir(self.path) if name != MARKER_FILE)
        if left:
            return left
        marker.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        return []

    # -- the run lock
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def lock_holder(self) -> dict[str, str] | None:
        """The run holding the lock (``{"pid", "started"}``), or None. Never creates anything."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def lock(self) -> tuple[int, dict[str, str] | None]:
        """Take the lab's lock for this process; returns ``(fd, stale)``.

        ``stale`` is the record of an earlier run that ended without releasing the lock (it was killed):
        its lock is taken over. Raises :class:`LabBusy` while another live run holds it. The lock is an
        ``flock``, so the kernel releases it when this process ends, however it ends; keep ``fd`` open.
        """
        self.ensure()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LabBusy(self.path, holder) from None
        stale = _read_holder(fd) or None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()}\nstarted={started}\n".encode(), 0)
        return fd, stale

    @staticmethod
    def unlock(fd: int) -> None:
        """Release a lock from :meth:`lock`: an empty lock file means the last run ended cleanly."""
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    # -- files
    def _file(self, name: str) -> Path:
        if not name or "/" in name or name in (".", "..") or name.startswith("."):
            raise StateError(f"invalid state file name {name!r}")
        return self.path / name

    def read_private(self, name: str) -> bytes | None:
        """Contents of a state file, or None if it does not exist. Never creates anything.

        A file found with a mode looser than 0600 is tightened (that is not a content change).
        """

        path = self._file(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read {path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                os.fchmod(f.fileno(), FILE_MODE)
                logger.info("%s: mode %04o tightened to %04o", path, mode, FILE_MODE)
            return f.read()

    def _write_temp(self, name: str, data: bytes) -> Path:
        self.ensure()
        temp = self.path / f".{name}.{_secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), FILE_MODE)  # umask-proof
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    def write_private(self, name: str, data: str | bytes) -> Path:
        """Atomically (re)write a state file with mode 0600; returns its path."""

        if isinstance(data, str):
            data = data.encode()
        final = self._file(name)
        temp = self._write_temp(name, data)
        os.replace(temp, final)
        return final

    def write_private_if_changed(self, name: str, data: str | bytes) -> bool:
        """Like :meth:`write_private`, but only when the content differs. Returns True if written."""

        if isinstance(data, str):
            data = data.encode()
        if self.read_private(name) == data:
            return False
        self.write_private(name, data)
        return True

    # -- the cluster token
    def peek_cluster_token(self) -> str | None:
        """The existing cluster token, or None. Never creates the folder or the file."""

        data = self.read_private(TOKEN_FILE)
        if data is None:
            return None
        token = data.decode("utf-8", "replace").strip()
        if not _TOKEN_RE.match(token):
            raise StateError(
                f"{self.token_path} does not contain a valid k3s token; remove it only if the "
                "cluster is recreated too (the servers keep the old token)"
            )
        SECRET_FILTER.add(token)
        return token

    def cluster_token(self) -> str:
        """The k3s join token: read it, or generate it once (48 hex characters) and store it.

        Concurrent callers agree on one token: the file is published with ``os.link``, which
        fails if another caller published first; the loser reads the winner's token.
        """

        token = self.peek_cluster_token()
        if token is not None:
            return token
        token = _secrets.token_hex(TOKEN_BYTES)
        SECRET_FILTER.add(token)
        temp = self._write_temp(TOKEN_FILE, (token + "\n").encode())
        try:
            os.link(temp, self.token_path)
        except FileExistsError:
            existing = self.peek_cluster_token()
            if existing is None:  # pragma: no cover - vanished between link and read
                raise StateError(f"cannot create {self.token_path}") from None
            return existing
        finally:
            temp.unlink(missing_ok=True)
        logger.info("generated a new k3s cluster token in %s", self.token_path)
        return token

    def cluster_token_source(self) -> SecretSource:
        """The cluster token as a :class:`SecretSource` (for ``k3s.secret_file``)."""

        def peek() -> bytes | None:
            token = self.peek_cluster_token()
            return None if token is None else (token + "\n").encode()

        def ensure() -> bytes:
            return (self.cluster_token() + "\n").encode()

        return SecretSource(
            description="the k3s cluster token",
            peek=peek,
            ensure=ensure,
            missing=f"will generate the cluster token (in {self.token_path})",
        )

    # -- the admin kubeconfig
    def read_kubeconfig(self) -> bytes | None:
        data = self.read_private(KUBECONFIG_FILE)
        if data is not None:
            register_kubeconfig_secrets(data)
        return data

    def kubeconfig_source(self) -> SecretSource:
        """The local admin kubeconfig as a :class:`SecretSource` (for ``k3s.secret_file``)."""

        def ensure() -> bytes:
            data = self.read_kubeconfig()
            if data is None:
                raise StateError(
                    f"{self.kubeconfig_path} does not exist: the kubeconfig was not fetched from "
                    "control (the k3s cluster phase must run first)"
                )
            return data

        return SecretSource(
            description="the admin kubeconfig",
            peek=self.read_kubeconfig,
            ensure=ensure,
            missing=f"will install the admin kubeconfig (fetched from control into {self.kubeconfig_path})",
        )


def _read_holder(fd: int) -> dict[str, str]:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


_KUBECONFIG_SECRET_RE = re.compile(
    r"^\s*(?:client-key-data|token|password|client-certificate-data):\s*(\S+)\s*$", re.M
)


def register_kubeconfig_secrets(data: str | bytes) -> None:
    """Register a kubeconfig's credentials (client key, tokens, passwords) for masking."""

    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    for match in _KUBECONFIG_SECRET_RE.finditer(data):
        SECRET_FILTER.add(match.group(1))
