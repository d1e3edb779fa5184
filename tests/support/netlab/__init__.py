"""Namespace lab: a stand-in for Multipass VMs built from Linux namespaces (root only, nothing in the root netns).

* ``lab.py`` - :class:`NetLab` (VMs = net+mount+uts+ipc+pid namespaces with a per-VM overlay of ``/``; switch
  namespace ``<prefix>-sw`` with the bridge; workstation namespace ``<prefix>-ws`` = 203.0.113.1/24). State in
  ``<workdir>/state.json`` (flock), so the ``multipass`` double can create/start/stop/delete VMs from another process.
* ``multipass`` - the CLI double (put this directory first in PATH, set CALICOLAB_NETLAB_STATE; ``lab.ws_env()``
  does both; ``lab.multipass(*args)`` runs it in the workstation namespace).
* ``vm/`` - stand-ins copied into every VM's /usr/local: systemctl, cloud-init, sudo (setuid python), netlab-boot.
* ``mirror.py`` + ``k3s_install.sh`` + ``k3s_fake.py`` - download mirror on http://203.0.113.1:8080 with a fake
  k3s installer/binary (API = tests.support.kubeapi emulator), kubectl and calicoctl; ``Mirror.data`` = ``--data``
  overrides.
* ``fixtures.py`` - pytest fixtures ``netlab`` and ``netlab_mirror`` (checked teardown).
"""
