# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TLS and basic auth for the HTTP servers of the programs the roles ship (the PgBouncer exporter, the registration
probe), from the same web configuration file the Prometheus exporters read (``--web.config.file``)::

    {"tls_server_config": {"cert_file": "x.crt", "key_file": "x.key"},
     "basic_auth_users": {"monitoring": "$2b$10$..."}}

The roles write it as JSON (which is YAML, so the Go exporters read the same file); relative paths are taken from
the file's directory, as the exporters do. Passwords are bcrypt hashes, checked with the ``bcrypt`` package when
it is installed, else with the C library's crypt(3) (glibc's libxcrypt knows bcrypt: Debian 12). A login that
passed once is remembered for the life of the process (a bcrypt check costs tens of milliseconds, and
Prometheus sends the same one on every scrape).

Standard library only and importing nothing of the collection: the pgbouncer_exporter role copies this file beside
its program (which imports it as ``web_auth``), the registration_probe role copies it with the other module_utils.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import base64
import binascii
import hashlib
import hmac
import json
import os
import ssl
import sys
import threading
import warnings
from typing import Any, Dict, Optional, Set, Tuple

REALM = "mlflow-ha monitoring"


class WebConfigError(ValueError):
    """A web configuration file the server cannot start with; the message names the file."""


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches the bcrypt hash ``hashed``."""
    try:
        import bcrypt  # noqa: PLC0415 - optional: crypt(3) below does the same

        return bcrypt.checkpw(password.encode("utf-8"), hashed.encode("ascii"))
    except ImportError:
        pass
    except ValueError:  # not a bcrypt hash
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # noqa: PLC0415 - Python < 3.13: the C library's crypt(3)
    result = crypt.crypt(password, hashed)
    return bool(result) and hmac.compare_digest(result, hashed)


class WebConfig:
    """What one web configuration file says: a certificate and key (TLS on when both are set) and the users."""

    def __init__(self, cert_file: Optional[str] = None, key_file: Optional[str] = None,
                 users: Optional[Dict[str, str]] = None):
        self.cert_file = cert_file
        self.key_file = key_file
        self.users = dict(users or {})
        self._key = os.urandom(32)
        self._passed: Set[bytes] = set()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str) -> WebConfig:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            raise WebConfigError("cannot read the web configuration %s: %s" % (path, err)) from None
        if not isinstance(data, dict):
            raise WebConfigError("web configuration %s: expected a mapping" % path)
        tls = data.get("tls_server_config") or {}
        users = data.get("basic_auth_users") or {}
        if not isinstance(tls, dict) or not isinstance(users, dict):
            raise WebConfigError("web configuration %s: tls_server_config and basic_auth_users must be mappings" % path)
        base = os.path.dirname(os.path.abspath(path))

        def where(name: str) -> Optional[str]:
            value = tls.get(name)
            return os.path.join(base, value) if value else None

        cert_file, key_file = where("cert_file"), where("key_file")
        if bool(cert_file) != bool(key_file):
            raise WebConfigError("web configuration %s: give both cert_file and key_file, or neither" % path)
        return cls(cert_file, key_file, {str(k): str(v) for k, v in users.items()})

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """The server's TLS context (TLS 1.2 or newer); None when the file names no certificate."""
        if not self.cert_file:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def allows(self, authorization: Optional[str]) -> bool:
        """Whether a request with this ``Authorization`` header may pass: always without users, else only with
        the basic-auth login of one of them."""
        if not self.users:
            return True
        user, password = parse_basic(authorization)
        if user is None or password is None:
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        token = hmac.new(self._key, ("%s\0%s\0%s" % (user, hashed, password)).encode("utf-8"),
                         hashlib.sha256).digest()
        with self._lock:
            if token in self._passed:
                return True
        if not check_password(password, hashed):
            return False
        with self._lock:
            self._passed.add(token)
        return True


def parse_basic(authorization: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(user, password) of a ``Basic`` Authorization header; (None, None) for anything else."""
    scheme, _sep, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None, None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = text.partition(":")
    return (user, password) if sep else (None, None)


class SecureServerMixin:
    """Mix into an ``http.server`` server class before it: with ``web_config`` set (``secure()``), accepted
    connections speak TLS (the handshake happens in the request's thread, so a slow client stalls only itself)."""

    web_config: Optional[WebConfig] = None
    _ssl_context: Optional[ssl.SSLContext] = None

    def secure(self, web_config: Optional[WebConfig]) -> None:
        self.web_config = web_config
        self._ssl_context = web_config.ssl_context() if web_config is not None else None

    def get_request(self) -> Tuple[Any, Any]:
        sock, address = super().get_request()  # type: ignore[misc]
        if self._ssl_context is not None:
            sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that fails the handshake (plain HTTP, an unknown CA, a port scanner) or hangs up is not worth a
        traceback in the journal on every scrape attempt; anything else is reported as usual."""
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[misc]


def authorized(handler: Any) -> bool:
    """For a request handler of a ``SecureServerMixin`` server: True when the request may be answered, else
    answers it 401 (with the challenge browsers and Prometheus understand) and returns False."""
    config = getattr(handler.server, "web_config", None)
    if config is None or config.allows(handler.headers.get("Authorization")):
        return True
    body = b"unauthorized: log in with the monitoring user\n"
    handler.send_response(401)
    handler.send_header("WWW-Authenticate", 'Basic realm="%s"' % REALM)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
    return False
