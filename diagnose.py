"""Diagnostics: check the lab and write a bundle a helper can read, secrets masked. Read-only.

    pyinfra inventory.py diagnose.py -y

The bundle is one folder per run under the local state folder (``.calicolab/diagnostics/``); its
path is printed at the end. Deploys and verifies write one by themselves when they fail.
"""

from pyinfra import host

from calicolab.diagnose import collect_on_failure
from calicolab.model import lab_for_host
from calicolab.operations import checks
from tasks import verify

lab = lab_for_host(host)

collect_on_failure(lab)
verify.observe(lab)
checks.bundle_written(name="Diagnostics bundle", lab=lab)
