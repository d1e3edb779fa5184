"""The mirror's HTTPS file server: ``python https_server.py ADDR PORT DIRECTORY CERT KEY [DELAYS_FILE]``.

Serves DIRECTORY like ``python -m http.server`` (and logs requests the same way, to stderr), over TLS,
because calicolab only accepts https:// download URLs. Each GET is also logged when it starts, as a line
``netlab-request {"t": ..., "client": ..., "path": ...}`` (for benchmark timelines). When DELAYS_FILE (the
lab's benchmark waits) has a "download" value, every binary (not a script or a checksum) is served that
many seconds late, as over a real link.
"""
import functools
import http.server
import json
import ssl
import sys
import time

NOT_BINARIES = (".sh", ".sha256", ".txt", "SHA256SUMS")


def download_delay(delays_file, path):
    """Seconds to wait before serving ``path``: the lab's "download" delay for binaries, else 0."""
    if not delays_file or path.split("?")[0].endswith(NOT_BINARIES):
        return 0.0
    try:
        with open(delays_file) as f:
            return float(json.load(f).get("download") or 0)
    except (OSError, ValueError, AttributeError):
        return 0.0


class Handler(http.server.SimpleHTTPRequestHandler):
    delays_file = None

    def do_GET(self):
        sys.stderr.write("netlab-request " + json.dumps({"t": time.time(), "client": self.client_address[0],
                                                         "path": self.path}) + "\n")
        sys.stderr.flush()
        seconds = download_delay(self.delays_file, self.path)
        if seconds > 0:
            time.sleep(seconds)
        super().do_GET()


def main(addr, port, directory, cert, key, delays_file=None):
    handler = functools.partial(type("LabHandler", (Handler,), {"delays_file": delays_file}), directory=directory)
    server = http.server.ThreadingHTTPServer((addr, int(port)), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
