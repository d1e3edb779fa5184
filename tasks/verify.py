"""Phase 5: the report card — the course's checkpoints, checked read-only, printed as one table.

``verify.py`` runs :func:`report_card` alone; the deploy runs :func:`check` (it first waits for the
YaoBank page, like the course's ``curl 198.19.0.1:30180`` from host1, then the same report card), so
a deploy and a verify agree. Call both on every host: each step picks its hosts.
"""

import shlex

from pyinfra import host

from calicolab import checks as checks_of
from calicolab.checks import YAOBANK_TEXT, yaobank_url
from calicolab.facts.vm import VmNow
from calicolab.kube.waits import http_check
from calicolab.model import lab_for_host
from calicolab.operations import checks, kubernetes
from calicolab.operations.barrier import barrier

EXPECTED_TEXT = YAOBANK_TEXT


#: Seconds the report card's probe may take within the deploy's first read of a VM. A converged VM
#: answers in about a second; in a half-built lab (an API that drops packets) its kubectl and calicoctl
#: would each wait out their own 20 s. Cut short, its rows fail and the VM is probed again at the end.
PROBE_WITH_READ_SECONDS = 10


def vm_probe(lab) -> str | None:
    """The script that looks into this VM for the report card (None on the workstation), bounded by
    ``PROBE_WITH_READ_SECONDS``: the deploy runs it along with its first read of the VM
    (``tasks.k3s.vm_now``). ``timeout`` ends the script's whole process group."""
    if host.name not in lab.vms:
        return None
    # the read has the units' states (``VmNow.units``); :func:`observe` puts them in as their sections
    probe = checks_of.vm_probe(lab, host.name, without=checks_of.service_sections(host.name))
    return f"timeout {PROBE_WITH_READ_SECONDS} sh -c {shlex.quote(probe)}"


def _probe_when_read(now: VmNow | None) -> str | None:
    """What the probe printed with the deploy's read of this VM, with its service sections from the
    units' states that the read took (what ``systemctl is-active`` prints is the ``ActiveState``)."""
    if now is None or now.probe is None:
        return None
    units = {section: now.units.get(unit, {}).get("active", "")
             for section, unit in checks_of.service_sections(host.name).items()}
    return checks_of.add_sections(now.probe, units)


def observe(lab, now: VmNow | None = None) -> None:
    """Every check, in course order; the rows are kept for the report. ``now``: the deploy's read of
    this VM while it was planned, with the probe's output (see ``checks.observed``)."""
    checks.observed(name="Check: VMs Running, inside each VM, the cluster", lab=lab,
                    planned_probe=_probe_when_read(now))


def report_card(lab, now: VmNow | None = None) -> None:
    """Every check, then the table (exit status 1 when a row failed)."""
    observe(lab, now)
    checks.report(name="Report card", lab=lab)


def _answered_when_read(now: VmNow | None) -> bool:
    """Whether host1's probe, run with the deploy's read of host1, got the YaoBank page."""
    if now is None or now.probe is None:  # not read (nor probed) while planned
        return False
    return http_check(checks_of.split_sections(now.probe).get("yaobank", ""), EXPECTED_TEXT)


def check(lab=None, now: VmNow | None = None) -> None:
    lab = lab or lab_for_host(host)
    if host.name == lab.client.name:
        kubernetes.http_answers(
            name=f"Verify: YaoBank answers on {yaobank_url(lab)} from host1",
            url=yaobank_url(lab),
            expect=EXPECTED_TEXT,
            timeout=lab.timeout_app_answer,
            lab=lab,
            answered_when_read=_answered_when_read(now),
        )
    barrier(name="── YaoBank answers ──")
    report_card(lab, now)
