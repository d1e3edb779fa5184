"""k3s-like PKI: a server CA, a client CA, a serving certificate and an admin client certificate."""
from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(subject, key, issuer_name, issuer_key, *, ca=False, server=False, sans=(), days=3650):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _load_or_make_ca(d: Path, stem: str, cn: str):
    crt, keyf = d / f"{stem}.crt", d / f"{stem}.key"
    if crt.exists() and keyf.exists():
        return (x509.load_pem_x509_certificate(crt.read_bytes()),
                serialization.load_pem_private_key(keyf.read_bytes(), None))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(_name(cn), key, _name(cn), key, ca=True)
    _write(keyf, _pem_key(key))
    _write(crt, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


class PKI:
    """Files in `directory` (k3s names): server-ca.{crt,key}, client-ca.{crt,key},
    serving-kube-apiserver.{crt,key} (always re-issued for the current SANs), client-admin.{crt,key} (kept)."""

    def __init__(self, directory: str | os.PathLike, san_ips=(), san_dns=()):
        d = self.dir = Path(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        ts = int(datetime.datetime.now().timestamp())
        server_ca, server_ca_key = _load_or_make_ca(d, "server-ca", f"k3s-server-ca@{ts}")
        client_ca, client_ca_key = _load_or_make_ca(d, "client-ca", f"k3s-client-ca@{ts}")
        sans = [x509.IPAddress(ipaddress.ip_address(i)) for i in san_ips] + [x509.DNSName(n) for n in san_dns]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(_name("kube-apiserver"), key, server_ca.subject, server_ca_key, server=True, sans=sans,
                      days=365)
        self.serving_cert, self.serving_key = d / "serving-kube-apiserver.crt", d / "serving-kube-apiserver.key"
        _write(self.serving_key, _pem_key(key))
        _write(self.serving_cert, cert.public_bytes(serialization.Encoding.PEM)
               + server_ca.public_bytes(serialization.Encoding.PEM))
        self.admin_cert, self.admin_key = d / "client-admin.crt", d / "client-admin.key"
        if not (self.admin_cert.exists() and self.admin_key.exists()):
            akey = ec.generate_private_key(ec.SECP256R1())
            acert = _issue(_name("system:admin", "system:masters"), akey, client_ca.subject, client_ca_key,
                           days=365)
            _write(self.admin_key, _pem_key(akey))
            _write(self.admin_cert, acert.public_bytes(serialization.Encoding.PEM)
                   + client_ca.public_bytes(serialization.Encoding.PEM))
        self.server_ca_pem = server_ca.public_bytes(serialization.Encoding.PEM)
        self.client_ca_pem = client_ca.public_bytes(serialization.Encoding.PEM)
        self.server_ca_file, self.client_ca_file = d / "server-ca.crt", d / "client-ca.crt"

    def issue_client(self, cn: str, org: str | None = None) -> tuple[bytes, bytes]:
        """An extra client certificate (PEM cert, PEM key) signed by the client CA."""
        ca = x509.load_pem_x509_certificate(self.client_ca_file.read_bytes())
        ca_key = serialization.load_pem_private_key((self.dir / "client-ca.key").read_bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(_name(cn, org), key, ca.subject, ca_key, days=365)
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def server_certificate(directory: str | os.PathLike, ip: str, cn: str) -> tuple[Path, Path, Path]:
    """A CA and a serving certificate for ``ip`` in ``directory``: paths (ca.crt, server.crt, server.key)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca, ca_key = _load_or_make_ca(d, "ca", f"{cn} CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(_name(cn), key, ca.subject, ca_key, server=True,
                  sans=[x509.IPAddress(ipaddress.ip_address(ip))], days=30)
    _write(d / "server.key", _pem_key(key))
    _write(d / "server.crt", cert.public_bytes(serialization.Encoding.PEM))
    return d / "ca.crt", d / "server.crt", d / "server.key"
