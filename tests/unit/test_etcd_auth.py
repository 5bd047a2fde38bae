"""etcd RBAC: the gateway client's login and token refresh, and the etcd_auth module's plan (create, check, enable
last, idempotent rerun, check mode, refusal of a wrong root password), on scripted gateway answers."""

from __future__ import annotations

import json

import pytest
from fakes import RouteTransport, json_ok

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.etcd import (
    EtcdAuthFailed,
    EtcdClient,
    Permission,
    b64,
    gateway_message,
    prefix_range_end,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import Response
from ansible_collections.mlops.mlflow_ha.plugins.modules import etcd_auth, etcd_cluster_info

U1 = "https://10.0.0.11:2379"
PREFIX = "/service/mlflow-ha/"


def err(status, code, message):
    return json_ok({"code": code, "message": "etcdserver: " + message}, status)


NOT_ENABLED = err(400, 9, "authentication is not enabled")
AUTH_FAILED = err(400, 3, "authentication failed, invalid user ID or password")
USER_EMPTY = err(400, 3, "user name is empty")
INVALID_TOKEN = err(401, 16, "invalid auth token")
OLD_REVISION = err(400, 3, "revision of auth store is old")
USER_NOT_FOUND = err(400, 9, "user name not found")
ROLE_NOT_FOUND = err(400, 9, "role name not found")
OK = json_ok({"header": {}})


def route(path):
    return "POST %s/v3%s" % (U1, path)


class FakeEtcd:
    """A small etcd auth store behind the gateway routes the client uses (one endpoint)."""

    def __init__(self, enabled=False, users=None, roles=None):
        self.enabled = enabled
        self.users = users or {}    # name -> {"password", "roles"}
        self.roles = roles or {}    # name -> [perm dicts]
        self.tokens = set()
        self.calls = []

    def handle(self, path, body, headers):
        self.calls.append(path)
        if path == "/auth/authenticate":
            return self.login(body)
        return self.refusal(headers) or self.manage(path, body)

    def login(self, body):
        if not self.enabled:
            return NOT_ENABLED
        user = self.users.get(body["name"])
        if not user or user["password"] != body["password"]:
            return AUTH_FAILED
        token = "tok-%s-%d" % (body["name"], len(self.calls))
        self.tokens.add(token)
        return json_ok({"token": token})

    def refusal(self, headers):
        if not self.enabled:
            return None
        token = headers.get("Authorization")
        if not token:
            return USER_EMPTY
        return None if token in self.tokens else INVALID_TOKEN

    def manage(self, path, body):
        if path == "/auth/role/get":
            if body["role"] not in self.roles:
                return ROLE_NOT_FOUND
            return json_ok({"header": {}, "perm": self.roles[body["role"]]})
        if path == "/auth/role/add":
            self.roles[body["name"]] = []
        elif path == "/auth/role/grant":
            self.roles[body["name"]].append(body["perm"])
        elif path == "/auth/role/revoke":
            self.roles[body["role"]] = [p for p in self.roles[body["role"]] if p["key"] != body["key"]]
        elif path == "/auth/user/get":
            if body["name"] not in self.users:
                return USER_NOT_FOUND
            return json_ok({"header": {}, "roles": self.users[body["name"]]["roles"]})
        elif path == "/auth/user/add":
            self.users[body["name"]] = {"password": body["password"], "roles": []}
        elif path == "/auth/user/changepw":
            self.users[body["name"]]["password"] = body["password"]
        elif path == "/auth/user/grant":
            self.users[body["user"]]["roles"].append(body["role"])
        elif path == "/auth/user/revoke":
            self.users[body["name"]]["roles"].remove(body["role"])
        elif path == "/auth/enable":
            assert "root" in self.users and "root" in self.users["root"]["roles"] and "root" in self.roles
            self.enabled = True
        return OK


class FakeEtcdTransport(RouteTransport):
    def __init__(self, clock, etcd):
        super().__init__(clock, {})
        self.etcd = etcd

    def send(self, method, url, body, headers, timeout):
        self.requests.append({"method": method, "url": url, "body": body, "headers": dict(headers)})
        path = url[len(U1) + len("/v3"):]
        answer = self.etcd.handle(path, json.loads(body or b"{}"), headers)
        return Response(answer.status, answer.body, answer.headers, url)


def params(**kw):
    base = dict(endpoints=[U1], ca_path=None, client_cert=None, client_key=None, validate_certs=True,
                username="root", password="root-pw", timeout=5.0, deadline=10.0, enabled=True,
                roles=[{"name": "patroni", "permissions": [{"key": PREFIX, "prefix": True, "range_end": "",
                                                            "type": "readwrite"}]}],
                users=[{"name": "patroni", "password": "patroni-pw", "roles": ["patroni"]},
                       {"name": "monitor", "password": "monitor-pw", "roles": []}])
    base.update(kw)
    return base


class TestHelpers:
    def test_prefix_range_end_is_etcds(self):
        assert prefix_range_end(b"/service/mlflow-ha/") == b"/service/mlflow-ha0"
        assert prefix_range_end(b"a\xff") == b"b"
        assert prefix_range_end(b"\xff") == b"\x00"

    def test_permission_round_trip_and_read_is_the_left_out_zero(self):
        perm = Permission.from_spec({"key": PREFIX, "prefix": True, "type": "readwrite"})
        assert perm.describe() == "readwrite /service/mlflow-ha/ (prefix)"
        assert Permission.from_gateway(perm.to_gateway()) == perm
        assert Permission.from_gateway({"key": b64(b"/k")}).type == "READ"
        with pytest.raises(ValueError):
            Permission.from_spec({"key": "/k", "type": "admin"})

    def test_gateway_message(self):
        assert gateway_message(INVALID_TOKEN) == "invalid auth token"
        assert gateway_message(Response(400, b"not json")) == ""


class TestClient:
    def test_logs_in_once_and_sends_the_token(self, clock):
        etcd = FakeEtcd(enabled=True, users={"monitor": {"password": "pw", "roles": []}})
        transport = FakeEtcdTransport(clock, etcd)
        client = EtcdClient([U1], transport=transport, clock=clock, username="monitor", password="pw")
        client.user_get("monitor")
        client.user_get("monitor")
        assert etcd.calls.count("/auth/authenticate") == 1 and client.logins == 1
        assert transport.requests[-1]["headers"]["Authorization"].startswith("tok-monitor")

    @pytest.mark.parametrize("stale", [INVALID_TOKEN, OLD_REVISION, USER_EMPTY])
    def test_a_stale_token_gets_one_new_login(self, clock, stale):
        etcd = FakeEtcd(enabled=True, users={"monitor": {"password": "pw", "roles": []}})
        client = EtcdClient([U1], transport=FakeEtcdTransport(clock, etcd), clock=clock, username="monitor",
                            password="pw")
        client.login()
        answers = [stale]
        real = etcd.handle
        etcd.handle = lambda path, body, headers: answers.pop() if answers and path != "/auth/authenticate" \
            else real(path, body, headers)
        assert client.user_get("monitor") == []
        assert client.logins == 2

    def test_auth_disabled_means_no_token(self, clock):
        etcd = FakeEtcd(enabled=False, users={})
        transport = FakeEtcdTransport(clock, etcd)
        client = EtcdClient([U1], transport=transport, clock=clock, username="monitor", password="pw")
        assert client.user_get("nobody") is None
        assert client.auth_enabled is False and "Authorization" not in transport.requests[-1]["headers"]

    def test_a_refused_login_says_so(self, clock):
        etcd = FakeEtcd(enabled=True, users={"monitor": {"password": "pw", "roles": []}})
        client = EtcdClient([U1], transport=FakeEtcdTransport(clock, etcd), clock=clock, username="monitor",
                            password="wrong")
        with pytest.raises(EtcdAuthFailed, match="refused the login of user 'monitor'"):
            client.login()

    def test_cluster_info_module_fails_with_the_refusal(self, clock, monkeypatch):
        etcd = FakeEtcd(enabled=True, users={"monitor": {"password": "pw", "roles": []}})
        monkeypatch.setattr(etcd_cluster_info, "transport_from_params", lambda p: FakeEtcdTransport(clock, etcd))
        result, failure = etcd_cluster_info.work(dict(
            endpoints=[U1], ca_path=None, client_cert=None, client_key=None, validate_certs=True, timeout=5.0,
            deadline=5.0, min_healthy=None, wait_timeout=0.0, poll_interval=1.0, username="monitor",
            password="wrong"))
        assert "refused the login" in failure and result["members"] == []


class TestModule:
    def test_a_new_cluster_gets_everything_and_auth_last(self, clock):
        etcd = FakeEtcd()
        result = etcd_auth.manage_auth(params(), False, FakeEtcdTransport(clock, etcd), clock)
        assert result["changed"] and result["enabled_now"] and result["auth_enabled"]
        assert result["roles_created"] == ["root", "patroni"]
        assert result["users_created"] == ["root", "patroni", "monitor"]
        assert result["granted"] == ["patroni: readwrite /service/mlflow-ha/ (prefix)"]
        last_user_call = max(i for i, c in enumerate(etcd.calls) if c.startswith("/auth/user/"))
        assert etcd.calls.index("/auth/enable") > last_user_call
        assert etcd.enabled and etcd.users["patroni"]["roles"] == ["patroni"]
        assert etcd.users["monitor"]["roles"] == []
        assert etcd.roles["patroni"] == [{"permType": "READWRITE", "key": b64(PREFIX.encode()),
                                          "range_end": b64(b"/service/mlflow-ha0")}]

    def test_a_second_run_changes_nothing_and_diff_is_equal(self, clock):
        etcd = FakeEtcd()
        etcd_auth.manage_auth(params(), False, FakeEtcdTransport(clock, etcd), clock)
        again = etcd_auth.manage_auth(params(), False, FakeEtcdTransport(clock, etcd), clock)
        assert again["changed"] is False and again["diff"]["before"] == again["diff"]["after"]

    def test_check_mode_changes_nothing(self, clock):
        etcd = FakeEtcd()
        result = etcd_auth.manage_auth(params(), True, FakeEtcdTransport(clock, etcd), clock)
        assert result["changed"] and result["enabled_now"]
        assert not etcd.enabled and etcd.users == {} and etcd.roles == {}

    def test_drift_is_repaired(self, clock):
        etcd = FakeEtcd()
        etcd_auth.manage_auth(params(), False, FakeEtcdTransport(clock, etcd), clock)
        etcd.users["patroni"]["password"] = "old"
        etcd.users["monitor"]["roles"].append("patroni")
        etcd.roles["patroni"].append({"permType": "READ", "key": b64(b"/other")})
        result = etcd_auth.manage_auth(params(), False, FakeEtcdTransport(clock, etcd), clock)
        assert result["passwords_updated"] == ["patroni"] and result["roles_revoked"] == ["monitor: patroni"]
        assert result["revoked"] == ["patroni: read /other"]
        assert etcd.users["patroni"]["password"] == "patroni-pw"

    def test_a_wrong_root_password_changes_nothing(self, clock):
        etcd = FakeEtcd()
        etcd_auth.manage_auth(params(), False, FakeEtcdTransport(clock, etcd), clock)
        before = json.dumps([etcd.users, etcd.roles])
        with pytest.raises(etcd_auth.EtcdAuthError, match="not etcd's; nothing was changed"):
            etcd_auth.manage_auth(params(password="guess"), False, FakeEtcdTransport(clock, etcd), clock)
        assert json.dumps([etcd.users, etcd.roles]) == before and etcd.enabled

    def test_prepare_only_keeps_auth_off_and_passwords_alone(self, clock):
        etcd = FakeEtcd(users={"patroni": {"password": "older", "roles": []}})
        result = etcd_auth.manage_auth(params(enabled=False), False, FakeEtcdTransport(clock, etcd), clock)
        assert not etcd.enabled and result["enabled_now"] is False and result["passwords_updated"] == []
        # The run that enables auth sets every existing user's password (a login could not check it before).
        result = etcd_auth.manage_auth(params(), False, FakeEtcdTransport(clock, etcd), clock)
        assert etcd.enabled and "patroni" in result["passwords_updated"]
        assert etcd.users["patroni"]["password"] == "patroni-pw"

    def test_root_is_etcds_own(self, clock):
        with pytest.raises(ValueError, match="root is etcd's own"):
            etcd_auth.manage_auth(params(roles=[{"name": "root", "permissions": []}]), False,
                                  FakeEtcdTransport(clock, FakeEtcd()), clock)
