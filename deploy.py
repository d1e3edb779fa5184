"""The Calico Operator Level 1 lab, in the order of the course.

    pyinfra inventory.py deploy.py            build (or bring back) the lab, then verify it
    pyinfra inventory.py deploy.py --dry --diff   show every change, change nothing

Every phase is idempotent: a second run reports no change. A barrier between phases keeps
them in this order on every host (pyinfra orders operations per host, not by line).
"""

from pyinfra import host

from calicolab.diagnose import collect_on_failure
from calicolab.model import lab_for_host
from calicolab.operations.barrier import barrier
from tasks import app, calico, k3s, verify, vms

lab = lab_for_host(host)

# A failed step writes a diagnostics bundle to the local state folder and prints its path.
collect_on_failure(lab)

# What each VM already has of phases 1 and 2, read once (one command per VM): the steps it shows
# done are left out of the plan, so a converged lab costs a few round trips, not dozens. The same
# command takes the report card's look inside the VM, which stands if the run changes nothing.
now = k3s.vm_now(lab, probe=verify.vm_probe(lab))

# 1. Creating the lab environment: four VMs from their cloud-init (meanwhile the workstation
#    downloads what phase 2 copies into them).
k3s.downloads_started(lab)
vms.vms_running(lab, now)
barrier(name="── phase 1 done: VMs running ──")

# 2. The Kubernetes cluster: the k3s server and agents together, host1's tools and BIRD alongside.
k3s.installed(lab, now)
barrier(name="── phase 2a done: k3s installed, host1's tools in place ──")
k3s.cluster_joined(lab, now)
barrier(name="── phase 2b done: cluster joined ──")
k3s.client(lab, now)
barrier(name="── phase 2 done: host1 ready ──")

# 3. Installing Calico: the tigera-operator, then the Installation.
calico.install(lab)
barrier(name="── phase 3 done: Calico available ──")

# 4. The YaoBank application.
app.deploy(lab)
barrier(name="── phase 4 done: YaoBank rolled out ──")

# 5. Verification: the YaoBank page from host1, then the report card (the same as verify.py).
verify.check(lab, now)
