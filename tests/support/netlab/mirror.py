"""The lab's download mirror: an HTTPS file server in the workstation namespace on https://203.0.113.1:8080,
reachable from every VM over the "Multipass DHCP" network (the VMs have no internet). Its certificate is
issued by a CA of the lab's own, which every VM trusts (``NetLab.trust_ca``), as a company mirror's would be.

Layout (upstream-like paths; ``{version}`` and ``{arch}`` as in the product's URL templates):

    k3s/install.sh                                            fake installer (mirror URL baked in)
    k3s/<k3s version>/k3s, k3s/<k3s version>/sha256sum-amd64.txt   fake k3s binary (version baked in)
    kubectl/release/<version>/bin/linux/<arch>/kubectl(.sha256)    wrapper exec'ing the venv's real kubectl
    calicoctl/releases/download/<version>/calicoctl-linux-<arch>   fake calicoctl
    calicoctl/releases/download/<version>/SHA256SUMS               "<hex>  calicoctl-linux-<arch>" lines

``Mirror(lab).start()``; ``mirror.data`` = the ``--data`` overrides pointing the product at it.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from .lab import HERE, PROJECT_DIR, WS_ADDR, NetLab

PORT = 8080
BASE = f"https://{WS_ADDR}:{PORT}"
DEFAULT_K3S = ("v1.35.4+k3s1",)
DEFAULT_KUBECTL = ("v1.35.4",)
DEFAULT_CALICOCTL = ("v3.32.1",)
ARCHES = ("amd64", "arm64")

KUBECTL_WRAPPER = """#!/bin/sh
# netlab fake kubectl {version}: the venv's real kubectl client, reporting the version it stands in for
case " $* " in
  *" version "*"--client"*|*" --client "*"version"*)
    printf '{{"clientVersion": {{"gitVersion": "{version}", "platform": "linux/amd64"}}}}\\n'
    exit 0 ;;
esac
exec {venv_bin}/kubectl "$@"
"""

CALICOCTL = """#!/usr/bin/python3
# netlab fake calicoctl {version}
import sys
args = [a for a in sys.argv[1:] if a != "--allow-version-mismatch"]
if args[:1] == ["version"]:
    print("Client Version:    {version}\\nGit commit:        netlab00\\nCluster Version:   {version}\\n"
          "Cluster Type:      typha,kdd,k8s,operator,bgp,kubeadm")
    sys.exit(0)
if args[:2] in (["get", "ippools"], ["get", "ippool"]):
    import json, os, subprocess
    # like calicoctl: without DATASTORE_TYPE=kubernetes it talks to etcd (none in the lab)
    if os.environ.get("DATASTORE_TYPE") != "kubernetes":
        print("Failed to get resources: context deadline exceeded (etcdv3 at http://127.0.0.1:2379)", file=sys.stderr)
        sys.exit(1)
    run = subprocess.run(["{venv_bin}/kubectl", "get", "ippools.crd.projectcalico.org", "-o", "json"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        print("Failed to get resources: " + run.stderr.strip(), file=sys.stderr)
        sys.exit(1)
    wide = "wide" in args
    print("NAME                  CIDR             SELECTOR" + ("   NAT     IPIPMODE   VXLANMODE" if wide else ""))
    for item in json.loads(run.stdout)["items"]:
        spec = item["spec"]
        line = f"{item['metadata']['name']:<21} {spec['cidr']:<16} {spec.get('nodeSelector', 'all()')}"
        if wide:
            line += f"   {str(spec.get('natOutgoing', False)).lower():<7} {spec.get('ipipMode', 'Never'):<10} " \
                    f"{spec.get('vxlanMode', 'Never')}"
        print(line)
    sys.exit(0)
print("netlab fake calicoctl: " + " ".join(args) + ": not emulated", file=sys.stderr)
sys.exit(1)
"""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Mirror:
    def __init__(self, lab: NetLab, k3s_versions=DEFAULT_K3S, kubectl_versions=DEFAULT_KUBECTL,
                 calicoctl_versions=DEFAULT_CALICOCTL):
        self.lab = lab
        self.root = lab.workdir / "mirror"
        self.k3s_versions = tuple(k3s_versions)
        self.kubectl_versions = tuple(kubectl_versions)
        self.calicoctl_versions = tuple(calicoctl_versions)
        self.proc: subprocess.Popen | None = None
        self.log_path = lab.workdir / "mirror.log"

    @property
    def data(self) -> dict[str, str]:
        """``--data`` overrides for group_data (keys as used by calicolab)."""
        kubectl = f"{BASE}/kubectl/release/{{version}}/bin/linux/{{arch}}/kubectl"
        calico = f"{BASE}/calicoctl/releases/download/{{version}}"
        return {
            "k3s_install_url": f"{BASE}/k3s/install.sh",
            "k3s_release_url": f"{BASE}/k3s/{{version}}",
            "kubectl_url": kubectl,
            "kubectl_sha256_url": kubectl + ".sha256",
            "calicoctl_url": f"{calico}/calicoctl-linux-{{arch}}",
            "calicoctl_sha256_url": f"{calico}/SHA256SUMS",
        }

    def data_args(self) -> list[str]:
        """``["--data", "k=v", ...]`` for a pyinfra command line."""
        out = []
        for k, v in self.data.items():
            out += ["--data", f"{k}={v}"]
        return out

    def _write(self, rel: str, data: bytes | str, mode: int = 0o644) -> bytes:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        b = data.encode() if isinstance(data, str) else data
        p.write_bytes(b)
        os.chmod(p, mode)
        return b

    def build(self) -> "Mirror":
        install = (HERE / "k3s_install.sh").read_text().replace("@@MIRROR@@", BASE)
        self._write("k3s/install.sh", install, 0o755)
        venv_bin = os.path.dirname(sys.executable)
        fake = (HERE / "k3s_fake.py").read_text().replace("@@PROJECT_DIR@@", str(PROJECT_DIR))
        fake = fake.replace("@@VENV_PY@@", sys.executable).replace("@@VENV_BIN@@", venv_bin)
        for v in self.k3s_versions:
            b = self._write(f"k3s/{v}/k3s", fake.replace("@@VERSION@@", v), 0o755)
            self._write(f"k3s/{v}/sha256sum-amd64.txt", f"{_sha(b)}  k3s\n")
        for v in self.kubectl_versions:
            for arch in ARCHES:
                b = self._write(f"kubectl/release/{v}/bin/linux/{arch}/kubectl", KUBECTL_WRAPPER.format(version=v, venv_bin=venv_bin),
                                0o755)
                self._write(f"kubectl/release/{v}/bin/linux/{arch}/kubectl.sha256", _sha(b))
        for v in self.calicoctl_versions:
            sums = []
            for arch in ARCHES:
                b = self._write(f"calicoctl/releases/download/{v}/calicoctl-linux-{arch}",
                                CALICOCTL.replace("{version}", v).replace("{venv_bin}", venv_bin), 0o755)
                sums.append(f"{_sha(b)}  calicoctl-linux-{arch}")
            self._write(f"calicoctl/releases/download/{v}/SHA256SUMS", "\n".join(sums) + "\n")
        return self

    def start(self) -> "Mirror":
        from ..kubeapi.tls import server_certificate

        self.build()
        ca, cert, key = server_certificate(self.lab.workdir / "mirror-tls", WS_ADDR, "netlab mirror")
        self.lab.trust_ca(ca)
        log = open(self.log_path, "ab")
        self.proc = self.lab.ws_popen([sys.executable, str(HERE / "https_server.py"), WS_ADDR, str(PORT),
                                       str(self.root), str(cert), str(key), str(self.lab.delays_path)],
                                      stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL)
        log.close()
        # readiness, checked from inside the workstation namespace (never from the root namespace)
        probe = ("import socket,sys,time\nfor i in range(100):\n try:\n  socket.create_connection"
                 f"(('{WS_ADDR}',{PORT}),0.2).close(); sys.exit(0)\n except OSError: time.sleep(0.05)\nsys.exit(1)")
        r = self.lab.ws_run([sys.executable, "-c", probe], timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"mirror did not start: {self.log_path.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def requests(self) -> list[str]:
        """Request lines served so far (from the server's log)."""
        try:
            return [ln for ln in self.log_path.read_text().splitlines() if '"GET ' in ln or '"HEAD ' in ln]
        except FileNotFoundError:
            return []

    def request_starts(self) -> list[dict]:
        """Every GET as it started: ``{"t": epoch seconds, "client": address, "path": ...}``."""
        try:
            lines = self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith("netlab-request ")]
