"""The mirror's HTTPS file server: ``python https_server.py ADDR PORT DIRECTORY CERT KEY``.

Serves DIRECTORY like ``python -m http.server`` (and logs requests the same way, to stderr), over TLS,
because calicolab only accepts https:// download URLs.
"""
import functools
import http.server
import ssl
import sys


def main(addr, port, directory, cert, key):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    server = http.server.ThreadingHTTPServer((addr, int(port)), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
