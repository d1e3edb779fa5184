"""The lab's Kubernetes API from the workstation.

* ``client``  — connection (direct with TLS name ``kubernetes``, or ``k3s kubectl`` on control),
  errors, object references;
* ``diff``    — normalisation of live / dry-run objects and unified YAML diffs;
* ``apply``   — parsing, ordering, planning (server-side dry run) and server-side apply;
* ``waits``   — rollout rule (kubectl's), CRDs Established, TigeraStatus, nodes Ready, polling;
* ``pools``   — what a change of the Installation's pools makes the operator do to the IPPools.

The pyinfra operations built on them are in ``calicolab.operations.kubernetes``.
"""
