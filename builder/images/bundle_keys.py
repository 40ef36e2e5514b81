"""The keys and certificates of bundling: PEM loading, making a self-signed key pair, amilab's
stand-in for EC2's key pair, and the signing certificates remembered per account.

amilab plays EC2's part with a key pair of its own (see ec2_key_pair): `--ec2cert`
defaults to its certificate, and `amilab register` decrypts with its private key. Signing
certificates that `bundle` used are remembered per account (as uploading an X.509 signing
certificate to AWS did) so that `register` can check a manifest's signature.
"""

from __future__ import annotations

import datetime
import fcntl
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from builder import paths
from builder.errors import BadInput


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise BadInput(f"{path}: not a readable PEM private key ({e})") from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadInput(f"{path}: not an RSA private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: not a readable PEM X.509 certificate ({e})") from e


def rsa_public(cert: x509.Certificate, where: str) -> rsa.RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadInput(f"{where}: the certificate's key is not RSA")
    return key


def make_key_pair(cert_path: Path, key_path: Path, common_name: str, days: int = 3650) -> None:
    """A 2048-bit RSA key and a self-signed certificate for it (PEM), as `openssl req -x509`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_path.with_name(key_path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    os.rename(tmp, key_path)
    tmp_cert = cert_path.with_name(cert_path.name + f".tmp{os.getpid()}")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.rename(tmp_cert, cert_path)


def ec2_key_pair() -> tuple[Path, Path]:
    """amilab's stand-in for EC2's certificate and key: (cert, key), made on first use.

    Like EC2's, it is one per user rather than one per registry: bundles made against one
    AMILAB_HOME register in another ($AMILAB_EC2_KEYS, else $XDG_CONFIG_HOME/amilab/ec2)."""
    if configured := os.environ.get("AMILAB_EC2_KEYS"):
        d = Path(configured)
    else:
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        d = Path(config) / "amilab" / "ec2"
    cert, key = d / "ec2-cert.pem", d / "ec2-pk.pem"
    if cert.exists() and key.exists():
        return cert, key
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:  # two first uses at once make one key pair
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cert.exists() and key.exists()):
            make_key_pair(cert, key, "amilab-ec2")
    return cert, key


def _signing_dir(account: str) -> Path:
    return paths.amilab_home() / "signing-certs" / account


def remember_signing_cert(account: str, cert_path: Path) -> None:
    cert = load_certificate(cert_path)
    fp = cert.fingerprint(hashes.SHA1()).hex()
    d = _signing_dir(account)
    d.mkdir(parents=True, exist_ok=True)
    dest = d / f"{fp}.pem"
    if not dest.exists():
        dest.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def signing_certs(account: str) -> list[Path]:
    d = _signing_dir(account)
    return sorted(d.glob("*.pem")) if d.is_dir() else []
