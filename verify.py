"""The report card: is this lab the course's lab? Read-only; nothing is changed.

    pyinfra inventory.py verify.py -y          check every checkpoint, print one table
    pyinfra inventory.py verify.py -y --json   the same, pyinfra's JSON on stdout, the table on stderr

Exit status 0 only when every row passes. A failing row shows what was observed and the next command
to try; a diagnostics bundle is written to the local state folder and its path printed.
"""

from pyinfra import host

from calicolab.diagnose import collect_on_failure
from calicolab.model import lab_for_host
from tasks import verify

lab = lab_for_host(host)

collect_on_failure(lab)
verify.report_card(lab)
