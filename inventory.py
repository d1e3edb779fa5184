"""The lab's hosts. Addresses and every other setting come from group_data/all.py.

* ``control``: the k3s server; ``nodes``: the k3s agents; ``clients``: host1, outside the
  cluster (kubectl, calicoctl, BIRD).
* ``workstation``: this machine (``@local``), which drives Multipass and the Kubernetes API.

The VMs are reached through the ``@multipass/NAME`` connector, which works before a VM
exists (it then reports what would be created instead of failing).

pyinfra loads this file before it connects to any host, so the workstation is checked here
first (settings, Multipass and its daemon, the lab's lock): a run that cannot succeed ends
with one message before anything is asked or changed.
"""

from pathlib import Path

from calicolab import preflight

preflight.run(checkout=Path(__file__).parent)

control = ["@multipass/control"]
nodes = ["@multipass/node1", "@multipass/node2"]
clients = ["@multipass/host1"]
workstation = ["@local"]
