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

USER_DATA_PATH = "/var/lib/cloud/instance/user-data.txt"


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


class CloudInitUserDataHash(FactBase):
    """
    Returns the sha256 of the user-data cloud-init used when the VM was created
    (``/var/lib/cloud/instance/user-data.txt``), or ``None`` if there is none.

    The digest is :func:`calicolab.multipass.user_data_digest`: the YAML content, normalised so that
    Multipass' re-serialisation of the user-data (comments, quoting) is not drift. Compare it with
    ``user_data_digest(rendered_text)``. The file is root-only: call with ``_sudo=True``.
    """

    abstract = False

    @override
    def command(self, path: str = USER_DATA_PATH) -> str:
        quoted = shlex.quote(path)
        return f"if [ -f {quoted} ]; then cat {quoted}; fi"

    @override
    def process(self, output) -> Any:
        return mp.user_data_digest("\n".join(output))
