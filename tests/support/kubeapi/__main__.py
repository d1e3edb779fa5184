"""python -m tests.support.kubeapi serve --host H --port P --tls-dir DIR ... (the fake k3s server's API)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .server import Emulator


def _tokens(path: str | None) -> list[str]:
    if not path:
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            out.append(line)
            if "::" in line:                      # K10<ca-hash>::<user>:<password> -> also accept the secret
                out.append(line.split("::", 1)[1].split(":", 1)[-1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.kubeapi")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the emulator until SIGTERM/SIGINT")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=6443)
    s.add_argument("--tls-dir", help="CA/certificates (reused across restarts); omit for plain HTTP")
    s.add_argument("--no-tls", action="store_true", help="plain HTTP")
    s.add_argument("--san-ip", action="append", default=[])
    s.add_argument("--san-dns", action="append", default=[])
    s.add_argument("--service-cidr", default="198.19.32.0/20")
    s.add_argument("--token-file", help="accepted bearer tokens, one a line")
    s.add_argument("--kubeconfig-out", help="write an admin kubeconfig here (mode 0600)")
    s.add_argument("--kubeconfig-server", help="server URL written into the kubeconfig (default: own URL)")
    s.add_argument("--ready-file", help="touched once the server accepts connections")
    s.add_argument("--state-file", help="keep the cluster state here across restarts (JSON)")
    s.add_argument("--controllers", action="append", default=[], metavar="MODULE:FUNC",
                   help="import MODULE and call FUNC(emulator) after start (repeatable)")
    s.add_argument("--log-level", default="WARNING")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s kubeapi %(levelname)s %(message)s")
    tls = not a.no_tls
    if tls and not a.tls_dir:
        ap.error("--tls-dir is required unless --no-tls is given")
    emu = Emulator(host=a.host, port=a.port, tls=tls, tls_dir=a.tls_dir,
                   san_ips=a.san_ip or ["127.0.0.1"],
                   san_dns=a.san_dns or ["kubernetes", "kubernetes.default", "localhost"],
                   service_cidr=a.service_cidr, tokens=_tokens(a.token_file), state_file=a.state_file)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    emu.start()
    try:
        if a.kubeconfig_out:
            emu.write_kubeconfig(a.kubeconfig_out, a.kubeconfig_server)
        for spec in a.controllers:
            mod, _, func = spec.partition(":")
            getattr(importlib.import_module(mod), func or "start")(emu)
        if a.ready_file:
            Path(a.ready_file).parent.mkdir(parents=True, exist_ok=True)
            Path(a.ready_file).write_text(f"{emu.url}\n{os.getpid()}\n")
        logging.getLogger(__name__).info("serving on %s", emu.url)
        while not done.wait(0.5):
            pass
    finally:
        emu.stop()
        if a.ready_file:
            Path(a.ready_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
