"""What a lab VM has now, read in one command (one ``multipass exec``), so the deploy can leave out
the steps that are already done.

Asking pyinfra's own facts costs one round trip each (``files.put`` asks ``File`` and then
``Sha256File``, ``systemd.service`` asks ``SystemdStatus`` and ``SystemdEnabled``; pyinfra 3.10 caches
no fact), and every operation waits for its slowest host. A converged lab would pay about a dozen
round trips per VM for nothing. The deploy reads :class:`VmState` once per VM while it is planned and
adds an operation only where this read shows a difference; the operations it adds still check for
themselves, with pyinfra's facts, when they run.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import override

from pyinfra.api import FactBase
from pyinfra.api.exceptions import FactProcessError

from calicolab.facts.k3s import RewrittenFileSha256
from calicolab.facts.multipass import first_boot_command, parse_first_boot

_FIRST_BOOT = "### first-boot"
_END_FIRST_BOOT = "### end first-boot"
_PROBE = "### probe"
_STAT = "###stat"
_SHA256 = "###sha256"
_UNIT = "###unit "
_TYPES = {"f": "file", "d": "directory"}  # find's %y; anything else exists as "other"

#: Where the deploy records, when it installs a binary, its sha256 with its size and modification
#: time: the read takes that digest instead of hashing the file again while size and time are the
#: same (k3s alone is ~70 MB, hashed on three VMs on every run otherwise).
STAMPS_DIR = "/var/lib/calicolab/verified"


def stamp_path(path: str) -> str:
    """The stamp file of ``path`` in the VM: ``stamp_path("/usr/local/bin/k3s")`` ->
    ``"/var/lib/calicolab/verified/usr_local_bin_k3s"``."""
    return f"{STAMPS_DIR}/{path.strip('/').replace('/', '_')}"


#: find's size and modification time, as the stamp records them and the read compares them
_SIZE_AND_TIME = "%s %T@"


def stamp_command(path: str) -> str:
    """Shell that records ``path``'s sha256, size and modification time in its stamp (run as root
    right after installing it); a stamp that cannot be written is removed, never left stale."""
    stamp, p = shlex.quote(stamp_path(path)), shlex.quote(path)
    size_and_time = f"find -L {p} -maxdepth 0 -printf '{_SIZE_AND_TIME}'"
    return (f"{{ mkdir -p {shlex.quote(STAMPS_DIR)} && s=$(sha256sum {p}) && "
            f"printf '%s %s\\n' \"${{s%% *}}\" \"$({size_and_time})\" > {stamp} || rm -f {stamp}; }}")


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class VmNow:
    """A :class:`VmState` answer with the comparisons the deploy makes.

    ``known`` is False when nothing could be read (the VM does not exist or is not running while the
    deploy is planned, or the read failed): then every comparison says "differs" and every step stays
    in the plan.

    Example::

        now = VmNow.read(host, files=["/etc/rancher/k3s/config.yaml"], units=["k3s"])
        if not now.file_matches("/etc/rancher/k3s/config.yaml", content=config, mode="0600"):
            files.put(...)
    """

    known: bool = False
    first_boot: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    units: dict[str, dict[str, str]] = field(default_factory=dict)
    rewritten_sha256: str | None = None
    probe: str | None = None

    @classmethod
    def read(cls, host, files=(), units=(), kubeconfig: tuple[str, str] | None = None,
             probe: str | None = None) -> VmNow:
        """Read the VM's state (as root) in one command; :class:`VmNow` with ``known=False`` when it
        cannot be read."""
        answer = host.get_fact(VmState, files=tuple(files), units=tuple(units), kubeconfig=kubeconfig, probe=probe,
                               _sudo=True, _ignore_errors=True)
        return cls(known=True, **answer) if answer else cls()

    def file_matches(self, path: str, *, content: str | bytes | None = None, sha256: str | None = None,
                     mode: str | None = None, user: str | None = None, group: str | None = None) -> bool:
        """Whether ``path`` is a regular file with this content (``content``, or its ``sha256``; with
        neither, the content to compare with is not known, so it does not match) and, when given,
        this mode and these owners."""
        found = self.files.get(path) if self.known else None
        if not found or found["type"] != "file":
            return False
        if content is not None:
            sha256 = _sha256(content)
        return (
            sha256 is not None and found["sha256"] == sha256
            and (mode is None or found["mode"] == mode.lstrip("0"))
            and (user is None or found["user"] == user)
            and (group is None or found["group"] == group)
        )

    def kubeconfig_matches(self, content: bytes | None) -> bool:
        """Whether the server's kubeconfig, rewritten like the fetched copy, is ``content``."""
        return self.known and content is not None and self.rewritten_sha256 == _sha256(content)

    def exists(self, path: str) -> bool:
        return self.known and self.files.get(path) is not None

    def directory_matches(self, path: str, *, mode: str, user: str, group: str) -> bool:
        found = self.files.get(path) if self.known else None
        return bool(found) and found["type"] == "directory" and (found["mode"], found["user"], found["group"]) == (
            mode.lstrip("0"), user, group)

    def unit_runs(self, unit: str) -> bool:
        """Whether the systemd ``unit`` is active and enabled."""
        found = self.units.get(unit) if self.known else None
        return bool(found) and found["active"] == "active" and found["enabled"] == "enabled"

    def first_boot_done(self) -> bool:
        return self.known and self.first_boot.get("status") == "done"


class VmState(FactBase):
    """
    Returns, from one command in the VM (needs root for root-only files: ``_sudo=True``):

    * ``first_boot``: what ``calicolab.facts.multipass.FirstBoot`` returns;
    * ``files``: for each path asked that exists, ``{"type": "file"|"directory"|"other", "mode": "644",
      "user", "group", "sha256"}`` (``sha256`` for files only); a path that does not exist is left out;
    * ``units``: for each systemd unit asked, ``{"active": ..., "enabled": ...}``, its ``ActiveState`` and
      ``UnitFileState`` (what ``systemctl is-active``/``is-enabled`` print; ``""`` when there is none);
    * ``rewritten_sha256``: with ``kubeconfig=(path, server)``, what ``calicolab.facts.k3s.RewrittenFileSha256``
      returns, else None;
    * ``probe``: with ``probe=<shell script>``, what the script printed (stdout), run last; else None.

    .. code:: python

        {"first_boot": {"status": "done", "fingerprint": "ddfe...", ...},
         "files": {"/etc/rancher/k3s/config.yaml": {"type": "file", "mode": "600", "user": "root",
                   "group": "root", "sha256": "3b1c..."}},
         "units": {"k3s": {"active": "active", "enabled": "enabled"}},
         "rewritten_sha256": None, "probe": None}
    """

    @override
    @staticmethod
    def default():
        return None

    @override
    def command(self, files=(), units=(), kubeconfig=None, probe=None) -> str:
        parts = [f"echo {shlex.quote(_FIRST_BOOT)}", first_boot_command(), f"echo {shlex.quote(_END_FIRST_BOOT)}"]
        # One find and one sha256sum for all the files, and systemctl's own lines, parsed here: a
        # process or two per file would cost more than the rest of the read.
        paths = " ".join(shlex.quote(path) for path in files)
        if files:
            parts.append(f"echo {shlex.quote(_STAT)}; stats=$(find -L {paths} -maxdepth 0 "
                         f"-printf '%y %m %u %g {_SIZE_AND_TIME} %p\\n' 2>/dev/null); printf '%s\\n' \"$stats\"")
            parts.append(f"echo {shlex.quote(_SHA256)}; set --")
            for path in files:
                # the stamp's digest while its size and time are the file's (the find line above),
                # else the file is hashed (below, one sha256sum for all)
                p, stamp = shlex.quote(path), shlex.quote(stamp_path(path))
                parts.append(f"sum=; size=; mtime=; {{ read -r sum size mtime < {stamp}; }} 2>/dev/null; "
                             f"case \"$stats\n\" in *\" $size $mtime \"{p}\"\n\"*) echo \"$sum  \"{p};; "
                             f"*) [ -f {p} ] && set -- \"$@\" {p};; esac")
            parts.append("[ $# -eq 0 ] || sha256sum -- \"$@\" 2>/dev/null")
        for unit in units:
            # ActiveState and UnitFileState are what is-active and is-enabled print
            parts.append(f"echo {shlex.quote(_UNIT + unit)}; "
                         f"systemctl show -p ActiveState -p UnitFileState {shlex.quote(unit)} 2>/dev/null")
        if kubeconfig:
            rewritten = RewrittenFileSha256().command(*kubeconfig).get_raw_value()
            parts.append(f'printf "rewritten %s\\n" "$({rewritten})"')
        if probe:
            parts += [f"echo {shlex.quote(_PROBE)}", f"{{ {probe} ; }}"]
        return "; ".join(parts) + "; true"

    @override
    def process(self, output) -> dict[str, Any] | None:
        lines = list(output)
        if not lines:  # a VM not running while the deploy is planned answers with nothing
            return None
        try:
            start, end = lines.index(_FIRST_BOOT), lines.index(_END_FIRST_BOOT)
        except ValueError:
            raise FactProcessError(f"{self.name}: no first-boot section in {lines[:3]!r}") from None
        answer: dict[str, Any] = {"first_boot": parse_first_boot(lines[start + 1:end]), "files": {}, "units": {},
                                  "rewritten_sha256": None, "probe": None}
        if _PROBE in lines[end + 1:]:
            probe_at = lines.index(_PROBE, end + 1)
            answer["probe"] = "\n".join(lines[probe_at + 1:])
            lines = lines[:probe_at]
        section, sha256 = "", {}
        for line in lines[end + 1:]:
            if line.startswith("rewritten "):
                answer["rewritten_sha256"] = line.split(" ")[1] or None
            elif line in (_STAT, _SHA256) or line.startswith(_UNIT):
                section = line
                if line.startswith(_UNIT):
                    answer["units"][line[len(_UNIT):]] = {"active": "", "enabled": ""}
            elif section == _STAT and line:
                fields = line.split(" ", 6)
                if len(fields) != 7:
                    raise FactProcessError(f"{self.name}: unexpected line {line!r}")
                kind, mode, user, group, _size, _time, path = fields
                answer["files"][path] = {"type": _TYPES.get(kind, "other"), "mode": mode, "user": user,
                                         "group": group}
            elif section == _SHA256:
                digest, _, path = line.partition("  ")
                sha256[path] = digest
            elif section.startswith(_UNIT):
                key, _, value = line.partition("=")
                field_name = {"ActiveState": "active", "UnitFileState": "enabled"}.get(key)
                if field_name:
                    answer["units"][section[len(_UNIT):]][field_name] = value
        for path, found in answer["files"].items():
            if found and found["type"] == "file":
                found["sha256"] = sha256.get(path)
        return answer
