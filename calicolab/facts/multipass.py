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
#: ``FirstBoot`` fingerprint of a VM whose cloud-init finished without writing a fingerprint
FINGERPRINT_MISSING = "no-calicolab-fingerprint"


class MultipassInstances(FactBase):
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

    @override
    @staticmethod
    def default():
        return {}

    @override
    def requires_command(self, multipass_bin: str = mp.DEFAULT_BIN) -> str:
        return mp.bin_argv(multipass_bin)[0]

    @override
    def command(self, multipass_bin: str = mp.DEFAULT_BIN) -> str:
        return mp.shell_join(mp.list_argv(multipass_bin))

    @override
    def process(self, output):
        try:
            return mp.parse_list("\n".join(output))
        except mp.MultipassOutputError as e:  # a clean host failure, not a traceback
            raise FactProcessError(f"{self.name}: unexpected Multipass output: {e}") from e


#: the line ``first_boot_command`` prints before cloud-init's own status lines
_FINGERPRINT_LINE = "calicolab-fingerprint:"


def first_boot_command(
    wait: float | None = None,
    path: str = USER_DATA_FINGERPRINT_PATH,
    boot_finished: str = BOOT_FINISHED_PATH,
) -> str:
    """One shell command for all that calicolab reads about a VM's first boot (one ``multipass exec``).

    Prints ``calicolab-fingerprint: <value>`` (see ``FirstBoot``), then what ``cloud-init status
    --long`` prints. With ``wait`` (seconds) it runs ``cloud-init status --wait --long`` under
    ``timeout``: it returns as soon as cloud-init has finished, or after ``wait`` seconds with
    ``status: running``. It exits 0 whatever cloud-init says (cloud-init exits 1 for an error and 2 for a
    recoverable error), so a failure means the VM did not run it at all.

    Example: ``first_boot_command(wait=600)`` ->
    ``out=$(timeout 600 cloud-init status --wait --long 2>/dev/null) || ...``
    """
    if wait is None:
        status = "out=$(cloud-init status --long 2>/dev/null); "
    else:  # still waiting when the timeout (exit 124) ends it: cloud-init is still running
        status = (f"out=$(timeout {max(1, int(wait))} cloud-init status --wait --long 2>/dev/null) "
                  '|| [ $? -ne 124 ] || out="status: running"; ')
    quoted = shlex.quote(path)
    # the fingerprint is read after the (waited-for) status: only then does boot-finished mean "done"
    return (
        status +
        f"if [ -f {quoted} ]; then fp=$(cat {quoted}); "
        f"elif [ -e {shlex.quote(boot_finished)} ]; then fp={FINGERPRINT_MISSING}; else fp=; fi; "
        f'printf "{_FINGERPRINT_LINE} %s\\n" "$fp"; [ -n "$out" ] && printf "%s\\n" "$out"; true'
    )


def parse_first_boot(lines: list[str]) -> dict[str, Any]:
    """``first_boot_command`` output -> ``{"fingerprint", "status", ...every field of cloud-init
    status --long (see ``calicolab.multipass.parse_cloud_init_status``), "raw"}``.

    ``status`` is None when cloud-init printed no status (not installed, or the wait ran out);
    ``fingerprint`` is None while there is nothing to judge yet.
    """
    fingerprint = None
    status_lines = []
    for line in lines:
        if line.startswith(_FINGERPRINT_LINE):
            fingerprint = line[len(_FINGERPRINT_LINE):].strip() or None
        else:
            status_lines.append(line)
    parsed = mp.parse_cloud_init_status(status_lines) or {"status": None}
    parsed["raw"] = "\n".join(line for line in status_lines if line.strip(". "))
    parsed["fingerprint"] = fingerprint
    return parsed


class FirstBoot(FactBase):
    """
    Returns, from one command in the VM, how its first boot went:

    * ``status``: cloud-init's status (``"done"``, ``"running"``, ``"error"``, ``"disabled"``, ...),
      None when cloud-init printed none (not installed, VM not running yet);
    * ``fingerprint``: what calicolab's user-data wrote to ``USER_DATA_FINGERPRINT_PATH`` (sha256 of
      the user-data as rendered, see ``calicolab.render.cloud_init_fingerprint``; what Multipass adds
      on its way into the VM does not change it): the 64 hex digits; ``FINGERPRINT_MISSING`` when
      cloud-init has finished without writing it (a VM created before calicolab wrote fingerprints);
      None while there is nothing to judge yet;
    * every field of ``cloud-init status --long`` and ``raw``, its text.

    .. code:: python

        {"status": "done", "fingerprint": "ddfe5587...", "extended_status": "done", "raw": "status: done\n..."}
    """

    @override
    @staticmethod
    def default():
        return {"status": None, "fingerprint": None, "raw": ""}

    @override
    def command(self) -> str:
        return first_boot_command()

    @override
    def process(self, output) -> Any:
        return parse_first_boot(list(output))
