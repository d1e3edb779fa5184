"""Facts about k3s inside the VMs.

Every fact command exits 0 when the thing asked about is absent (absence is a normal answer,
a non-zero exit fails the host: pyinfra 3.10 ``pyinfra/api/facts.py``), and ``process`` raises only :class:`FactProcessError` on malformed output.
Facts that read root-only files (``/etc/rancher/k3s/k3s.yaml``) need ``_sudo=True``: they inherit
it from the operation that asks for them, or pass it to ``host.get_fact``.
"""

from __future__ import annotations

import re

from pyinfra.api import FactBase, StringCommand, QuoteString
from pyinfra.api.exceptions import FactProcessError

K3S_BIN = "/usr/local/bin/k3s"

def _k3s(*args) -> StringCommand:
    """``/usr/local/bin/k3s ARGS`` if the binary exists (no output otherwise, exit 0)."""

    return StringCommand(
        "if", "[", "-x", K3S_BIN, "];", "then", K3S_BIN, *args, "2>/dev/null", "||", "true;", "fi"
    )


class K3sApiReadyz(FactBase):
    """
    The answer of the API server's ``/readyz`` endpoint through ``k3s kubectl`` on a server
    (``"ok"`` when ready), or ``None`` when k3s is absent or the API does not answer.
    Needs root (``_sudo=True``).
    """


    def command(self):
        return _k3s("kubectl", "get", "--raw", "/readyz", "--request-timeout=10s")

    def process(self, output):
        text = "\n".join(line.strip() for line in output).strip()
        return text or None


class K3sNodes(FactBase):
    """
    Names of the nodes registered in the cluster (``k3s kubectl get nodes -o name``, without the
    ``node/`` prefix), ``[]`` when k3s is absent or the API does not answer. Needs root.
    Registered does not mean Ready: nodes stay NotReady until a CNI (Calico) runs.
    """

    default = list

    def command(self):
        return _k3s("kubectl", "get", "nodes", "-o", "name", "--request-timeout=10s")

    def process(self, output):
        return node_names(output)


def node_names(lines) -> list[str]:
    """Node names from ``kubectl get nodes -o name`` lines: ``["node/control"]`` → ``["control"]``."""

    return [line.strip()[len("node/"):] for line in lines if line.strip().startswith("node/")]


class RewrittenFileSha256(FactBase):
    """
    sha256 of a (root-only) kubeconfig file after its ``server:`` lines were rewritten to
    ``server`` (the same rewrite as :func:`calicolab.operations.k3s.rewrite_kubeconfig`), or
    ``None`` if the file does not exist. Lets an operation compare a fetched, rewritten copy
    with the remote original without transferring the file (which holds a client key).

    + path: the remote file
    + server: the URL that replaces every ``server:`` value
    """


    def command(self, path, server):
        script = "s#^\\([[:space:]]*\\)server:[[:space:]].*$#\\1server: {0}#".format(server)
        return StringCommand(
            "if", "[", "-f", QuoteString(path), "];", "then",
            "sed", QuoteString(script), QuoteString(path), "|", "sha256sum;", "fi",
        )

    def process(self, output):
        for line in output:
            digest = line.strip().split(" ")[0]
            if re.fullmatch(r"[0-9a-f]{64}", digest):
                return digest
        raise FactProcessError(f"unexpected sha256sum output: {output[:1]!r}")
