"""
Facts about Multipass instances (run on the workstation, ``@local``) and about cloud-init inside the
VMs (run on ``@multipass/NAME`` hosts).
"""

from __future__ import annotations

import shlex
from typing import Any

from typing_extensions import override

from pyinfra.api import FactBase
from pyinfra.api.exceptions import FactProcessError

from calicolab import multipass as mp
from calicolab.constants import USER_DATA_FINGERPRINT_PATH

#: cloud-init writes it when the first boot's modules have all run
BOOT_FINISHED_PATH = "/var/lib/cloud/instance/boot-finished"
#: ``UserDataFingerprint`` of a VM whose cloud-init finished without writing a fingerprint
FINGERPRINT_MISSING = "no-calicolab-fingerprint"


class _JsonFact(FactBase):
    """Joins stdout lines and turns parse problems into ``FactProcessError`` (a clean host failure)."""

    abstract = True

    def parse(self, text: str):  # pragma: no cover - abstract
        raise NotImplementedError

    @override
    def process(self, output):
        try:
            return self.parse("\n".join(output))
        except (mp.MultipassOutputError, ValueError, TypeError, KeyError) as e:
            raise FactProcessError(f"{self.name}: unexpected Multipass output: {e}") from e


def _bin(multipass_bin: str | None) -> str:
    return mp.shell_join(mp.bin_argv(multipass_bin))


class MultipassInstances(_JsonFact):
    """
    Returns every Multipass instance and its state, from ``multipass list --format json``.

    .. code:: python

        {
            "control": {"state": "Running", "ipv4": ["10.80.0.5", "198.19.0.1"], "release": "Ubuntu 24.04 LTS"},
            "node1": {"state": "Stopped", "ipv4": [], "release": "Not Available"},
        }

    ``state`` is any of Running, Stopped, Deleted, Starting, Restarting, Delayed Shutdown, Suspending,
    Suspended, Unknown (Unavailable on newer Multipass). ``ipv4`` lists the management address first
    and then every other global address: do not assume which one is the lab address. Returns ``{}``
    while Multipass is not installed during Prepare.
    """

    abstract = False

    @override
    @staticmethod
    def default():
        return {}

    @override
    def requires_command(self, multipass_bin: str = mp.DEFAULT_BIN) -> str:
        return mp.bin_argv(multipass_bin)[0]

    @override
    def command(self, multipass_bin: str = mp.DEFAULT_BIN) -> str:
        return f"{_bin(multipass_bin)} list --format json"

    def parse(self, text):
        return mp.parse_list(text)


class MultipassInstanceInfo(_JsonFact):
    """
    Returns ``multipass info NAME --format json`` for one instance, or ``None`` if it does not exist.

    .. code:: python

        {
            "state": "Running",
            "cpu_count": "1",                       # a string, may be ""
            "memory": {"total": 1503238554, "used": 60817408},   # integers, {} when stopped
            "disks": {"sda1": {"total": "5153960756", "used": "1288490188"}},  # strings
            "ipv4": ["10.80.0.5"], "load": [0.1, 0.05, 0.0],
            "release": "Ubuntu 24.04.1 LTS", "image_release": "24.04 LTS", "image_hash": "...",
            "mounts": {}, "snapshot_count": "0",
        }
    """

    abstract = False

    @override
    def requires_command(self, instance: str, multipass_bin: str = mp.DEFAULT_BIN) -> str:
        return mp.bin_argv(multipass_bin)[0]

    @override
    def command(self, instance: str, multipass_bin: str = mp.DEFAULT_BIN) -> str:
        self._instance = mp.check_instance_name(instance)
        info = shlex.join(mp.info_argv(multipass_bin, instance)[len(mp.bin_argv(multipass_bin)):])
        # "does not exist" is a normal answer: print nothing and exit 0 then; other errors go to
        # stderr with Multipass' exit code.
        return (
            f"out=$({_bin(multipass_bin)} {info} 2>&1); rc=$?; "
            'if [ $rc -eq 0 ]; then printf "%s\\n" "$out"; '
            'elif printf "%s" "$out" | grep -q "does not exist"; then :; '
            'else printf "%s\\n" "$out" >&2; exit $rc; fi'
        )

    def parse(self, text):
        info = mp.parse_info(text)
        name = getattr(self, "_instance", None)
        if name is not None:
            return info.get(name)
        return next(iter(info.values()), None)


class CloudInitStatus(FactBase):
    """
    Returns cloud-init's status inside a VM: ``"done"``, ``"running"``, ``"error"``, ``"disabled"``,
    ``"not started"``/``"not run"``, or ``None`` (no cloud-init, VM not running yet).

    Reads ``cloud-init status --long`` (falls back to ``cloud-init status`` on old releases); exits 0
    for every status.
    """

    abstract = False

    @override
    def requires_command(self) -> str:
        return "cloud-init"

    @override
    def command(self) -> str:
        return (
            "out=$(cloud-init status --long 2>/dev/null); "
            'case "$out" in *status:*) ;; *) out=$(cloud-init status 2>/dev/null) ;; esac; '
            '[ -n "$out" ] && printf "%s\\n" "$out"; true'
        )

    @override
    def process(self, output):
        parsed = mp.parse_cloud_init_status(output)
        if parsed is None:
            raise FactProcessError(f"{self.name}: no 'status:' line in cloud-init output: {output[:3]!r}")
        return parsed["status"]


class CloudInitStatusLong(CloudInitStatus):
    """
    Like ``CloudInitStatus`` but returns every field of ``cloud-init status --long``:
    ``{"status", "extended_status", "detail", "errors", ...}`` plus ``"raw"`` (the whole text).
    """

    @override
    def process(self, output):
        parsed = mp.parse_cloud_init_status(output)
        if parsed is None:
            raise FactProcessError(f"{self.name}: no 'status:' line in cloud-init output: {output[:3]!r}")
        parsed["raw"] = "\n".join(output)
        return parsed


class UserDataFingerprint(FactBase):
    """
    Returns the fingerprint calicolab's user-data wrote into the VM (``USER_DATA_FINGERPRINT_PATH``:
    sha256 of the user-data as rendered, see ``calicolab.render.cloud_init_fingerprint``):

    * the 64 hex digits, when the file is there;
    * ``FINGERPRINT_MISSING`` when cloud-init has finished but the file is not there (a VM created
      before calicolab wrote fingerprints, or from another user-data);
    * ``None`` while there is nothing to judge yet (VM not running, first boot not finished).

    What Multipass adds to the user-data on its way into the VM does not change this value.

    .. code:: python

        "ddfe5587a7d8a0f03ec225708013d299a1f57c6865c19fbcbe346af7941107fd"
    """

    abstract = False

    @override
    def command(self, path: str = USER_DATA_FINGERPRINT_PATH, boot_finished: str = BOOT_FINISHED_PATH) -> str:
        quoted = shlex.quote(path)
        return (
            f"if [ -f {quoted} ]; then cat {quoted}; "
            f"elif [ -e {shlex.quote(boot_finished)} ]; then echo {FINGERPRINT_MISSING}; fi"
        )

    @override
    def process(self, output) -> Any:
        text = "\n".join(output).strip()
        return text or None
