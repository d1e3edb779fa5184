"""A kube-proxy and container stand-in for the test lab: NodePort Services answer once their pods would.

For every Service of type NodePort, while a Deployment in its namespace whose pod labels match the
Service's selector has available replicas, an HTTP server listens on 0.0.0.0:<nodePort> (inside the control
VM's network namespace) and answers with the page the Deployment's image would serve. When no backing
Deployment is available, nothing listens (connection refused, like a Service without endpoints).
"""
from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

YAOBANK_CUSTOMER_PAGE = """<!DOCTYPE html>
<html><head><title>YAO Bank</title></head>
<body>
<h1>Welcome to YAO Bank</h1>
<h2>Name: Spike Curtis</h2>
<h2>Balance: 2389.45</h2>
<p>(netlab stand-in for {image})</p>
</body></html>
"""


def page_for(image: str) -> str:
    if "yaobank-customer" in image:
        return YAOBANK_CUSTOMER_PAGE.format(image=html.escape(image))
    return f"<html><body>netlab stand-in for {html.escape(image)}</body></html>\n"


def _matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class NodePorts:
    def __init__(self, emu, interval: float = 0.3):
        self.store, self.interval = emu.store, interval
        self.servers: dict[int, tuple[ThreadingHTTPServer, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="netlab-nodeports", daemon=True)

    def start(self) -> "NodePorts":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for port in list(self.servers):
            self._close(port)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - a stand-in must keep running; the next pass retries
                pass

    def wanted(self) -> dict[int, str]:
        """nodePort -> page, for every NodePort Service with an available backing Deployment."""
        result = {}
        for service in self.store.list("v1", "Service"):
            spec = service.get("spec") or {}
            if spec.get("type") != "NodePort":
                continue
            namespace = service["metadata"].get("namespace")
            for deployment in self.store.list("apps/v1", "Deployment", namespace=namespace):
                template = deployment["spec"]["template"]
                if not _matches(spec.get("selector") or {}, (template.get("metadata") or {}).get("labels") or {}):
                    continue
                if ((deployment.get("status") or {}).get("availableReplicas") or 0) < 1:
                    continue
                image = template["spec"]["containers"][0].get("image", "")
                for port in spec.get("ports") or []:
                    if port.get("nodePort"):
                        result[int(port["nodePort"])] = page_for(image)
        return result

    def reconcile(self) -> None:
        wanted = self.wanted()
        for port in list(self.servers):
            if port not in wanted or self.servers[port][1] != wanted[port]:
                self._close(port)
        for port, page in wanted.items():
            if port not in self.servers:
                self._open(port, page)

    def _open(self, port: int, page: str) -> None:
        body = page.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server naming
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"nodeport-{port}", daemon=True).start()
        self.servers[port] = (server, page)

    def _close(self, port: int) -> None:
        server, _ = self.servers.pop(port)
        server.shutdown()
        server.server_close()
