"""Phase 5: the report card — the course's checkpoints, checked read-only, printed as one table.

``verify.py`` runs :func:`report_card` alone; the deploy runs :func:`check` (it first waits for the
YaoBank page, like the course's ``curl 198.19.0.1:30180`` from host1, then the same report card), so
a deploy and a verify agree. Call both on every host: each step picks its hosts.
"""

from pyinfra import host

from calicolab.checks import YAOBANK_TEXT, yaobank_url
from calicolab.model import lab_for_host
from calicolab.operations import checks, kubernetes
from calicolab.operations.barrier import barrier

EXPECTED_TEXT = YAOBANK_TEXT


def observe(lab) -> None:
    """Every check, in course order; the rows are kept for the report."""
    checks.observed(name="Check: VMs Running, inside each VM, the cluster", lab=lab)


def report_card(lab) -> None:
    """Every check, then the table (exit status 1 when a row failed)."""
    observe(lab)
    checks.report(name="Report card", lab=lab)


def check(lab=None) -> None:
    lab = lab or lab_for_host(host)
    if host.name == lab.client.name:
        kubernetes.http_answers(
            name=f"Verify: YaoBank answers on {yaobank_url(lab)} from host1",
            url=yaobank_url(lab),
            expect=EXPECTED_TEXT,
            timeout=lab.timeout_app_answer,
            lab=lab,
        )
    barrier(name="── YaoBank answers ──")
    report_card(lab)
