"""The scram_sha256 filter: PostgreSQL's SCRAM-SHA-256 secret format, checked against RFC 7677's exchange, and the
same secret on every run."""

from __future__ import annotations

import base64
import hashlib
import hmac

from ansible_collections.mlops.mlflow_ha.plugins.filter.scram_sha256 import FilterModule, scram_secret, scram_sha256

# RFC 7677, section 3: user "user", password "pencil".
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
AUTH_MESSAGE = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
CLIENT_PROOF = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_SIGNATURE = base64.b64decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def parts(secret: str) -> tuple[int, bytes, bytes, bytes]:
    head, keys = secret[len("SCRAM-SHA-256$"):].split("$")
    iterations, salt = head.split(":")
    stored, server = keys.split(":")
    return int(iterations), base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server)


def test_the_secret_verifies_rfc_7677s_exchange():
    iterations, salt, stored_key, server_key = parts(scram_secret("pencil", SALT))
    assert (iterations, salt) == (4096, SALT)
    # The server's signature in the RFC comes from ServerKey...
    assert hmac.new(server_key, AUTH_MESSAGE, hashlib.sha256).digest() == SERVER_SIGNATURE
    # ...and the client's proof, unmasked with StoredKey's signature, hashes to StoredKey.
    signature = hmac.new(stored_key, AUTH_MESSAGE, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(CLIENT_PROOF, signature))
    assert hashlib.sha256(client_key).digest() == stored_key


def test_the_same_user_and_password_give_the_same_secret_and_others_differ():
    first = scram_sha256("lab-mlflow-db", "mlflow")
    assert first.startswith("SCRAM-SHA-256$4096:") and first == scram_sha256("lab-mlflow-db", "mlflow")
    assert first != scram_sha256("lab-mlflow-db", "postgres_exporter")
    assert first != scram_sha256("another-password", "mlflow")
    assert len(parts(first)[1]) == 16


def test_the_salt_tells_nothing_about_the_password():
    """The salt is public (pg_authid, PgBouncer's auth file): it depends on the user alone, so it cannot be used to
    test password guesses without PBKDF2's iterations."""
    salts = {parts(scram_sha256(password, "mlflow"))[1] for password in ("lab-mlflow-db", "another-password", "x" * 40)}
    assert salts == {hashlib.sha256(b"mlflow-ha scram salt:mlflow").digest()[:16]}
    assert parts(scram_sha256("lab-mlflow-db", "postgres_exporter"))[1] not in salts


def test_a_secret_is_passed_through_and_the_filter_is_registered():
    secret = scram_sha256("x" * 12, "u")
    assert scram_sha256(secret, "someone-else") == secret
    assert FilterModule().filters()["scram_sha256"] is scram_sha256
