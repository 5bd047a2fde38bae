# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host keys and certificates signed by the collection CA, made on the controller with ``cryptography``.

The logic of the action plugin mlops.mlflow_ha.pki_issue, in plain functions (tests call them without Ansible).
Certificates look like the ones community.crypto's openssl_privatekey, openssl_csr_pipe and x509_certificate
(provider ownca) made for the pki role before, so a store they filled is taken as it is: subject CN only, the
subject alternative names, key usage (digitalSignature + keyAgreement for EC keys), extended key usage, subject
and authority key identifiers, a random serial, valid from the moment of issue, SHA-256.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
import typing as t

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.x509.oid import NameOID
except ImportError as exc:  # ansible-core needs it, but a controller could lack it: say so when asked to issue
    CRYPTOGRAPHY_ERROR: ImportError | None = exc
else:
    CRYPTOGRAPHY_ERROR = None

KEY_MODE = 0o600
CERT_MODE = 0o644
STORE_MODE = 0o700

# Curve names (community.crypto's and OpenSSL's) and the classes of cryptography.hazmat.primitives.asymmetric.ec.
CURVES = {
    "secp256r1": "SECP256R1",
    "secp384r1": "SECP384R1",
    "secp521r1": "SECP521R1",
    "secp224r1": "SECP224R1",
    "secp256k1": "SECP256K1",
    "brainpoolP256r1": "BrainpoolP256R1",
    "brainpoolP384r1": "BrainpoolP384R1",
    "brainpoolP512r1": "BrainpoolP512R1",
}
KEY_TYPES = ("ECC", "RSA")

# Extended key usages by the names community.crypto (and OpenSSL) accept, short and long; dotted OIDs pass as well.
_USAGES = {
    "1.3.6.1.5.5.7.3.1": ("serverAuth", "TLS Web Server Authentication"),
    "1.3.6.1.5.5.7.3.2": ("clientAuth", "TLS Web Client Authentication"),
    "1.3.6.1.5.5.7.3.3": ("codeSigning", "Code Signing"),
    "1.3.6.1.5.5.7.3.4": ("emailProtection", "E-mail Protection"),
    "1.3.6.1.5.5.7.3.8": ("timeStamping", "Time Stamping"),
    "1.3.6.1.5.5.7.3.9": ("OCSPSigning", "OCSP Signing"),
}
USAGE_OIDS = {name: dotted for dotted, names in _USAGES.items() for name in names}


class PkiError(Exception):
    """A request that cannot be served; the message is the whole story and never holds key material."""


def missing_ca_message(ca_dir: str) -> str:
    return (f"pki: no CA certificate at {ca_dir}/ca.crt. Apply the role mlops.mlflow_ha.pki to the play before the "
            "roles that need certificates (site.yml does), or point pki_ca_dir at the existing CA.")


def parse_san(entry: str) -> x509.GeneralName:
    """``DNS:name``, ``IP:address`` (or ``IP:network``), ``email:address`` or ``URI:uri`` as a GeneralName."""
    kind, sep, value = str(entry).partition(":")
    if not sep or not value:
        raise PkiError(f"subject_alt_names: cannot read {entry!r}: expected DNS:<name> or IP:<address>")
    try:
        if kind == "DNS":
            return x509.DNSName(_idna(value))
        if kind == "IP":
            if "/" in value:
                return x509.IPAddress(ipaddress.ip_network(value))
            return x509.IPAddress(ipaddress.ip_address(value))
        if kind == "email":
            return x509.RFC822Name(value)
        if kind == "URI":
            return x509.UniformResourceIdentifier(value)
    except ValueError as exc:
        raise PkiError(f"subject_alt_names: cannot read {entry!r}: {exc}") from exc
    raise PkiError(f"subject_alt_names: unknown kind {kind!r} in {entry!r}: expected DNS:, IP:, email: or URI:")


def _idna(name: str) -> str:
    if name.isascii():
        return name
    return ".".join(label if label.isascii() else label.encode("idna").decode("ascii") for label in name.split("."))


def parse_usage(name: str) -> x509.ObjectIdentifier:
    """An extended key usage by name (serverAuth, TLS Web Server Authentication, ...) or dotted OID."""
    name = str(name)
    dotted = USAGE_OIDS.get(name, name)
    parts = dotted.split(".")
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        return x509.ObjectIdentifier(dotted)
    raise PkiError(f"extended_key_usages: unknown usage {name!r}: use one of {', '.join(sorted(USAGE_OIDS))} "
                   "or a dotted OID")


def _load_pem(path: str, loader: t.Callable[[bytes], t.Any], what: str) -> t.Any:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return loader(data)
    except ValueError as exc:
        raise PkiError(f"pki: cannot read {what} {path}: {exc}") from exc


def load_ca_key(ca_dir: str, passphrase: str, ca_cert: x509.Certificate) -> t.Any:
    path = os.path.join(ca_dir, "ca.key")
    if not os.path.isfile(path):
        raise PkiError(f"pki: no CA key at {path} beside {ca_dir}/ca.crt: restore it, or point pki_ca_dir at the "
                       "complete CA (a new CA means new certificates on every host).")
    with open(path, "rb") as f:
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode("utf-8") if passphrase else None)
    except (ValueError, TypeError) as exc:
        # cryptography's words ("Bad decrypt. Incorrect password?", "Password was not given but private key is
        # encrypted") never contain the passphrase.
        raise PkiError(f"pki: cannot read the CA key {path} with ca_passphrase (pki_ca_passphrase): {exc}") from exc
    if _public_der(key.public_key()) != _public_der(ca_cert.public_key()):
        raise PkiError(f"pki: the CA key {path} does not belong to the CA certificate {ca_dir}/ca.crt")
    return key


def _public_der(public_key: t.Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(key: t.Any, key_type: str, key_curve: str, key_size: int) -> bool:
    if key_type == "ECC":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == key_curve
    return isinstance(key, rsa.RSAPrivateKey) and key.key_size == key_size


def generate_key(key_type: str, key_curve: str, key_size: int) -> t.Any:
    if key_type == "ECC":
        return ec.generate_private_key(getattr(ec, CURVES[key_curve])())
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def key_usage(key: t.Any) -> x509.KeyUsage:
    """EC keys: digitalSignature + keyAgreement (as the pki role always asked for); RSA keys: digitalSignature +
    keyEncipherment (keyAgreement means nothing for RSA)."""
    is_ec = isinstance(key, ec.EllipticCurvePrivateKey)
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not is_ec,
                         data_encipherment=False, key_agreement=is_ec, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def _extension(cert: x509.Certificate, cls: type) -> t.Any:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def cert_problems(cert: x509.Certificate, ca_cert: x509.Certificate, key: t.Any, subject: x509.Name,
                  sans: set, usages: set, renew_before: datetime.timedelta, now: datetime.datetime) -> list[str]:
    """Why ``cert`` must be issued again; empty when it is up to date. Only what the request decides is compared
    (not the serial, the key usage, the key identifiers nor the lifetime), so certificates made by other tools
    with the same names stay."""
    problems = []
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        problems.append("not signed by the current CA")
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        problems.append("its public key is not the key's")
    if cert.subject != subject:
        problems.append("the subject differs")
    san = _extension(cert, x509.SubjectAlternativeName)
    if set(san or []) != sans:
        problems.append("the subject alternative names differ")
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if set(eku or []) != usages:
        problems.append("the extended key usages differ")
    if cert.not_valid_after_utc - now < renew_before:
        problems.append(f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}, within {renew_before.days} days")
    return problems


def build_cert(key: t.Any, ca_cert: x509.Certificate, ca_key: t.Any, subject: x509.Name, sans: list,
               usages: list, valid_days: int, now: datetime.datetime) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=valid_days))
               .add_extension(x509.SubjectAlternativeName(sans), critical=False)
               .add_extension(key_usage(key), critical=False)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    ca_ski = _extension(ca_cert, x509.SubjectKeyIdentifier)
    if ca_ski is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    else:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    builder = builder.add_extension(aki, critical=False)
    algorithm = None if isinstance(ca_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    return builder.sign(ca_key, algorithm)


def write_atomic(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file of its own beside ``path`` (mode set before any byte is written), then
    rename it over ``path``: readers see the old file or the new one, never half of one; parallel writers in other
    directories (one per host) never share a name."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fix_mode(path: str, mode: int) -> bool:
    if os.stat(path).st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        return True
    return False


def validate(key_type: str, key_curve: str, key_size: int, valid_days: int, renew_before_days: int,
             name: str) -> None:
    if key_type not in KEY_TYPES:
        raise PkiError(f"key_type: expected one of {', '.join(KEY_TYPES)}, got {key_type!r}")
    if key_type == "ECC" and key_curve not in CURVES:
        raise PkiError(f"key_curve: expected one of {', '.join(CURVES)}, got {key_curve!r}")
    if key_type == "RSA" and key_size < 2048:
        raise PkiError(f"key_size: RSA keys need at least 2048 bits, got {key_size}")
    if valid_days < 1:
        raise PkiError(f"valid_days: must be at least 1, got {valid_days}")
    if not 0 <= renew_before_days < valid_days:
        raise PkiError(f"renew_before_days: must be at least 0 and less than valid_days ({valid_days}), got "
                       f"{renew_before_days} (every run would issue the certificate again)")
    if not name or "/" in name or name in (".", ".."):
        raise PkiError(f"name: a file name stem without '/' is needed, got {name!r}")


def issue(ca_dir: str, ca_passphrase: str, store_dir: str, name: str, common_name: str,
          subject_alt_names: list[str], extended_key_usages: t.Sequence[str] = ("serverAuth", "clientAuth"),
          key_type: str = "ECC", key_curve: str = "secp384r1", key_size: int = 4096, valid_days: int = 825,
          renew_before_days: int = 30, now: datetime.datetime | None = None) -> dict[str, t.Any]:
    """Make ``<store_dir>/<name>.key`` and ``<name>.crt`` (signed by the CA in ``ca_dir``) exist and be up to date.

    Returns ``changed`` (something was written), ``key_changed``, ``cert_changed``, ``reasons`` (why the
    certificate was issued) and the paths. Raises PkiError."""
    if CRYPTOGRAPHY_ERROR is not None:
        raise PkiError(f"pki_issue needs the Python library cryptography on the controller: {CRYPTOGRAPHY_ERROR}")
    validate(key_type, key_curve, key_size, valid_days, renew_before_days, name)
    if not common_name:
        raise PkiError("common_name: must not be empty")
    sans = [parse_san(s) for s in subject_alt_names] or [x509.DNSName(_idna(common_name))]
    usages = [parse_usage(u) for u in extended_key_usages]
    if not usages:
        raise PkiError("extended_key_usages: at least one usage is needed")
    now = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_cert_path = os.path.join(ca_dir, "ca.crt")
    if not os.path.isfile(ca_cert_path):
        raise PkiError(missing_ca_message(ca_dir))
    ca_cert = _load_pem(ca_cert_path, x509.load_pem_x509_certificate, "the CA certificate")

    key_path = os.path.join(store_dir, f"{name}.key")
    cert_path = os.path.join(store_dir, f"{name}.crt")
    result: dict[str, t.Any] = {"changed": False, "key_changed": False, "cert_changed": False, "reasons": [],
                                "key_path": key_path, "cert_path": cert_path, "ca_cert_path": ca_cert_path}

    if not os.path.isdir(store_dir):
        os.makedirs(store_dir, mode=STORE_MODE, exist_ok=True)
        result["changed"] = True
    result["changed"] |= _fix_mode(store_dir, STORE_MODE)

    key = None
    if os.path.isfile(key_path):
        with open(key_path, "rb") as f:
            try:
                key = serialization.load_pem_private_key(f.read(), None)
            except (ValueError, TypeError):
                key = None  # unreadable or encrypted: a new one, as openssl_privatekey does
        if key is not None and not key_matches(key, key_type, key_curve, key_size):
            key = None
    if key is None:
        key = generate_key(key_type, key_curve, key_size)
        write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                                 serialization.NoEncryption()), KEY_MODE)
        result.update(changed=True, key_changed=True)
    else:
        result["changed"] |= _fix_mode(key_path, KEY_MODE)

    if not os.path.isfile(cert_path):
        result["reasons"] = ["no certificate yet"]
    else:
        try:
            cert = _load_pem(cert_path, x509.load_pem_x509_certificate, "the certificate")
        except PkiError as exc:
            result["reasons"] = [str(exc)]
        else:
            result["reasons"] = cert_problems(cert, ca_cert, key, subject, set(sans), set(usages),
                                              datetime.timedelta(days=renew_before_days), now)
    if result["reasons"]:
        ca_key = load_ca_key(ca_dir, ca_passphrase, ca_cert)
        cert = build_cert(key, ca_cert, ca_key, subject, sans, usages, valid_days, now)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
        result.update(changed=True, cert_changed=True)
    else:
        result["changed"] |= _fix_mode(cert_path, CERT_MODE)
    return result


# --- expiry metrics for node_exporter's textfile collector (written on the host by the module pki_files) ---------

METRICS_FILE_PREFIX = "mlflow_ha_cert_"


def metrics_file_name(dest_dir: str, name: str) -> str:
    """The textfile collector's file for the certificate ``name`` installed in ``dest_dir``: stable, one per
    certificate directory and name (``/etc/etcd/tls`` + ``etcd`` gives ``mlflow_ha_cert_etc_etcd_tls_etcd.prom``)."""
    stem = "".join(c if c.isascii() and c.isalnum() else "_" for c in f"{dest_dir}/{name}")
    stem = "_".join(part for part in stem.split("_") if part)
    return f"{METRICS_FILE_PREFIX}{stem or 'unnamed'}.prom"


def _common_name(name: x509.Name) -> str:
    """The CN of a name, else the whole name in RFC 4514 form."""
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def certificate_expiries(pem: str | bytes, path: str) -> list[dict[str, t.Any]]:
    """Each certificate of ``pem`` (one, or a bundle as ca.crt) as a sample of the expiry gauge: ``path`` (where the
    host holds it), subject and issuer CN, serial (hex, which tells two certificates with the same names apart) and
    ``not_after`` in Unix seconds. Computed on the controller: the managed hosts need no ``cryptography``."""
    if CRYPTOGRAPHY_ERROR is not None:
        raise PkiError(f"pki_issue needs the Python library cryptography on the controller: {CRYPTOGRAPHY_ERROR}")
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"pki: cannot read the certificates for {path}: {exc}") from exc
    return [{"path": path, "subject": _common_name(cert.subject), "issuer": _common_name(cert.issuer),
             "serial": format(cert.serial_number, "x"), "not_after": int(cert.not_valid_after_utc.timestamp())}
            for cert in certs]
