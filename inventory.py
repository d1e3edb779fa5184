"""The lab's hosts. Addresses come from group_data/all.py (the one place for settings).

* ``control``: the k3s server; ``nodes``: the k3s agents; ``clients``: host1, outside the
  cluster (kubectl, calicoctl, BIRD).
* ``workstation``: this machine (``@local``), which drives Multipass and the Kubernetes API.

The VMs are reached through the ``@multipass/NAME`` connector, which works before a VM
exists (it then reports what would be created instead of failing).
"""

from calicolab.model import load_defaults

_settings = load_defaults()


def _vm(name):
    return (
        f"@multipass/{name}",
        {"lab_ip": _settings["lab_ips"][name], "mgmt_ip": _settings["mgmt_ips"][name]},
    )


control = [_vm("control")]
nodes = [_vm("node1"), _vm("node2")]
clients = [_vm("host1")]
workstation = ["@local"]
