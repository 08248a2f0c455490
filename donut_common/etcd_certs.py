"""The certificates that close the embedded etcd to everyone but the stack.

etcd on loopback is reachable by every OS user of the machine, so the embedded one speaks
only TLS and takes only clients (and peers) with a certificate signed by a CA of its own.
The keys live in `<data dir>/etcd-tls/` (0700, files 0600): whoever can read them is the
stack's user already. The CA's key is thrown away once it has signed, so no further
certificate can be made with it; a new set is made when a file is missing or the
certificates near their end.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from donut_common.files import write_private

VALID_FOR = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class EtcdCerts:
    """The files of one set, in `directory`."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The CA certificate both sides trust."""
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        """etcd's certificate, for clients and for its peer port (server and client use)."""
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        """The stack's certificate as etcd's client."""
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    def files(self) -> tuple[Path, ...]:
        return self.ca, self.server_cert, self.server_key, self.client_cert, self.client_key

    def usable(self, now: datetime.datetime) -> bool:
        """Every file is there and no certificate ends within RENEW_BEFORE."""
        try:
            certs = [x509.load_pem_x509_certificate(p.read_bytes()) for p in (self.ca, self.server_cert,
                                                                              self.client_cert)]
            return all(p.exists() for p in self.files()) and all(
                c.not_valid_after_utc - RENEW_BEFORE > now for c in certs)
        except (OSError, ValueError):
            return False


def ensure_certs(directory: Path, host: str) -> EtcdCerts:
    """The set in `directory`, made first when it is missing or ending; `host` (with
    127.0.0.1 and localhost) is the name etcd's certificate is good for."""
    certs = EtcdCerts(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # for the stack's user only, even when it existed
    now = datetime.datetime.now(datetime.UTC)
    if certs.usable(now):
        return certs
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("donut etcd CA")
    ca = (_builder(ca_name, ca_name, ca_key.public_key(), now)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (_builder(_name("donut etcd"), ca_name, server_key.public_key(), now)
              .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (_builder(_name("donut"), ca_name, client_key.public_key(), now)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    for path, data in ((certs.ca, _pem(ca)), (certs.server_cert, _pem(server)), (certs.server_key, _key(server_key)),
                       (certs.client_cert, _pem(client)), (certs.client_key, _key(client_key))):
        write_private(path, data)
    return certs


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey,
             now: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())

