"""Facts about k3s and the lab's command-line tools inside the VMs.

Every fact command exits 0 when the thing asked about is absent (absence is a normal answer,
a non-zero exit fails the host: pyinfra 3.10 ``pyinfra/api/facts.py``), and ``process`` raises only :class:`FactProcessError` on malformed output.
Facts that read root-only files (``/etc/rancher/k3s/k3s.yaml``) need ``_sudo=True``: they inherit
it from the operation that asks for them, or pass it to ``host.get_fact``.
"""

from __future__ import annotations

import json
import re

from pyinfra.api import FactBase, StringCommand, QuoteString
from pyinfra.api.exceptions import FactProcessError

K3S_BIN = "/usr/local/bin/k3s"

_K3S_VERSION_RE = re.compile(r"^k3s version (v\S+)")


def _k3s(*args) -> StringCommand:
    """``/usr/local/bin/k3s ARGS`` if the binary exists (no output otherwise, exit 0)."""

    return StringCommand(
        "if", "[", "-x", K3S_BIN, "];", "then", K3S_BIN, *args, "2>/dev/null", "||", "true;", "fi"
    )


class K3sVersion(FactBase):
    """
    The installed k3s version (``k3s --version``), e.g. ``"v1.35.4+k3s1"``, or ``None`` when
    k3s is not installed.

    .. code:: python

        host.get_fact(K3sVersion)  # "v1.35.4+k3s1"
    """


    def command(self):
        return _k3s("--version")

    def process(self, output):
        for line in output:
            match = _K3S_VERSION_RE.match(line.strip())
            if match:
                return match.group(1)
        return None


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
        names = []
        for line in output:
            line = line.strip()
            if line.startswith("node/"):
                names.append(line[len("node/"):])
        return names


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


_KUBECTL_GITVERSION_RE = re.compile(r'"gitVersion"\s*:\s*"(v[^"]+)"')
_CALICOCTL_CLIENT_RE = re.compile(r"^Client Version:\s*(v\S+)")


def parse_tool_version(tool: str, output: list[str]) -> str | None:
    """Parse a tool's version output: kubectl ``version --client -o json`` (gitVersion) or
    calicoctl ``version`` (``Client Version:    v3.32.1``); other tools: first ``v...`` word."""

    text = "\n".join(output)
    if tool == "kubectl":
        try:
            data = json.loads(text)
            version = (data.get("clientVersion") or {}).get("gitVersion")
            if version:
                return version
        except (ValueError, AttributeError):
            pass
        match = _KUBECTL_GITVERSION_RE.search(text)
        return match.group(1) if match else None
    if tool == "calicoctl":
        for line in output:
            match = _CALICOCTL_CLIENT_RE.match(line.strip())
            if match:
                return match.group(1)
        return None
    match = re.search(r"\b(v\d+\.\d+\.\d+\S*)", text)
    return match.group(1) if match else None


class ToolVersion(FactBase):
    """
    The client version of an installed command-line tool, or ``None`` when the binary is absent.

    + tool: ``"kubectl"`` (``kubectl version --client -o json`` → ``clientVersion.gitVersion``) or
      ``"calicoctl"`` (``calicoctl version``, first line ``Client Version:    v3.32.1``; it also tries
      to reach a cluster, hence a 20 s ``timeout``); any other tool: ``<path> --version``
    + path: the binary's absolute path

    .. code:: python

        host.get_fact(ToolVersion, tool="kubectl", path="/usr/local/bin/kubectl")  # "v1.35.4"
    """


    def command(self, tool, path):
        if tool == "kubectl":
            args = ["version", "--client", "-o", "json"]
        elif tool == "calicoctl":
            args = ["version"]
        else:
            args = ["--version"]
        self._tool = tool
        return StringCommand(
            "if", "[", "-x", QuoteString(path), "];", "then",
            "timeout", "20", QuoteString(path), *args, "2>/dev/null", "||", "true;", "fi",
        )

    def process(self, output):
        return parse_tool_version(getattr(self, "_tool", ""), output)
