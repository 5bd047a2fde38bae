"""TLS and basic auth of the collection's own HTTP servers (module_utils/web_auth.py) and the bcrypt hashes the
pki role's web_config entry point writes for them and for the Prometheus exporters (filter bcrypt_hash)."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible.errors import AnsibleFilterError
from fakes import web_config_files

from ansible_collections.mlops.mlflow_ha.plugins.filter.bcrypt_hash import bcrypt_hash, bcrypt_salt
from ansible_collections.mlops.mlflow_ha.plugins.module_utils import web_auth


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def test_the_hash_is_the_same_on_every_run_and_differs_between_hosts():
    first = bcrypt_hash("lab-monitoring", "mon1/monitoring")
    assert first == bcrypt_hash("lab-monitoring", "mon1/monitoring")
    assert first.startswith("$2b$10$") and len(first) == 60
    assert first != bcrypt_hash("lab-monitoring", "pg1/monitoring")
    assert web_auth.check_password("lab-monitoring", first)
    assert not web_auth.check_password("lab-monitorinG", first)


def test_the_salt_is_not_made_from_the_password():
    assert bcrypt_hash("a-password", "mon1/u")[7:29] == bcrypt_hash("another", "mon1/u")[7:29] == bcrypt_salt("mon1/u")


@pytest.mark.parametrize(("password", "message"), [("", "empty"), ("x" * 73, "longer than 72 bytes")])
def test_passwords_bcrypt_cannot_keep_are_refused(password, message):
    with pytest.raises(AnsibleFilterError, match=message):
        bcrypt_hash(password, "mon1/u")


def test_only_a_listed_user_with_its_password_passes():
    config = web_auth.WebConfig(users={"monitoring": bcrypt_hash("pw", "t/monitoring", rounds=4)})
    assert config.allows(basic("monitoring", "pw"))
    assert config.allows(basic("monitoring", "pw")), "remembered"
    assert not config.allows(basic("monitoring", "PW"))
    assert not config.allows(basic("other", "pw"))
    for header in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert not config.allows(header)
    assert web_auth.WebConfig().allows(None), "no users: open"


def test_the_file_names_paths_relative_to_itself(tmp_path):
    path, _ca = web_config_files(tmp_path, {"monitoring": "pw"})
    config = web_auth.WebConfig.load(str(path))
    assert (config.cert_file, config.key_file) == (str(tmp_path / "test.crt"), str(tmp_path / "test.key"))
    assert set(config.users) == {"monitoring"}
    assert config.ssl_context() is not None


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "cannot read"),
    (json.dumps([1]), "expected a mapping"),
    (json.dumps({"tls_server_config": {"cert_file": "x.crt"}}), "both cert_file and key_file"),
    (json.dumps({"basic_auth_users": ["u"]}), "must be mappings"),
])
def test_a_bad_file_is_refused_with_its_name(tmp_path, content, message):
    (tmp_path / "web.yml").write_text(content)
    with pytest.raises(web_auth.WebConfigError, match=message) as info:
        web_auth.WebConfig.load(str(tmp_path / "web.yml"))
    assert "web.yml" in str(info.value)


class _Server(web_auth.SecureServerMixin, ThreadingHTTPServer):
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    timeout = 5

    def do_GET(self):
        if not web_auth.authorized(self):
            return
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        return


def serve_tls(tmp_path, users):
    path, ca = web_config_files(tmp_path, users)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.secure(web_auth.WebConfig.load(str(path)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, ssl.create_default_context(cafile=str(ca))


def get(url, context, header=None):
    request = urllib.request.Request(url, headers={"Authorization": header} if header else {})
    with urllib.request.urlopen(request, timeout=5, context=context) as answer:
        return answer.status, answer.read()


def test_https_with_the_login_and_401_without(tmp_path):
    server, context = serve_tls(tmp_path, {"monitoring": "pw"})
    url = "https://127.0.0.1:%d/" % server.server_address[1]
    try:
        assert get(url, context, basic("monitoring", "pw")) == (200, b"ok\n")
        for header in (None, basic("monitoring", "wrong")):
            with pytest.raises(urllib.error.HTTPError) as info:
                get(url, context, header)
            assert info.value.code == 401
            assert info.value.headers["WWW-Authenticate"] == 'Basic realm="mlflow-ha monitoring"'
        with pytest.raises(OSError):  # plain HTTP on the TLS port gets no answer
            urllib.request.urlopen("http://127.0.0.1:%d/" % server.server_address[1], timeout=5)
    finally:
        server.shutdown()
        server.server_close()
