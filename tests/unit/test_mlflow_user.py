"""The mlflow_user module against a fake of MLflow's basic-auth user API (3.17): users, passwords checked by
logging in, the admin flag, direct grants; idempotence and check mode."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import Response, Transport
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import MlflowError
from ansible_collections.mlops.mlflow_ha.plugins.modules import mlflow_user

ADMIN = ("admin", "admin-password-12")


class FakeAuthServer(Transport):
    """MLflow's user and permission endpoints, with users {name: {password, is_admin, grants}}."""

    def __init__(self, clock, users=None):
        self.clock = clock
        self.users = users if users is not None else {}
        self.users.setdefault(ADMIN[0], {"password": ADMIN[1], "is_admin": True, "grants": {}})
        self.writes: list[tuple[str, str, dict]] = []

    def send(self, method, url, body, headers, timeout):  # noqa: PLR0911 (one answer per endpoint)
        self.clock.t += 0.01
        parts = urlsplit(url)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        doc = json.loads(body) if body else {}
        caller = self.login(headers)
        if caller is None:
            return self.answer(url, 401, {"error_code": "UNAUTHENTICATED", "message": "no"})
        if method != "GET":
            self.writes.append((method, path, doc))
        if path == "/api/2.0/mlflow/users/current":
            return self.answer(url, 200, {"user": {"username": caller}})
        if path == "/api/2.0/mlflow/users/get":
            user = self.users.get(query["username"])
            if user is None:
                return self.answer(url, 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such user"})
            return self.answer(url, 200, {"user": {"username": query["username"], "is_admin": user["is_admin"]}})
        if path == "/api/2.0/mlflow/users/create":
            self.users[doc["username"]] = {"password": doc["password"], "is_admin": False, "grants": {}}
            return self.answer(url, 200, {"user": {"username": doc["username"]}})
        if path == "/api/2.0/mlflow/users/update-password":
            self.users[doc["username"]]["password"] = doc["password"]
            return self.answer(url, 200, {})
        if path == "/api/2.0/mlflow/users/update-admin":
            self.users[doc["username"]]["is_admin"] = doc["is_admin"]
            return self.answer(url, 200, {})
        if path == "/api/2.0/mlflow/users/delete":
            del self.users[doc["username"]]
            return self.answer(url, 200, {})
        if path == "/api/3.0/mlflow/users/permissions/list":
            user = self.users[query["username"]]
            rows = [{"role_name": "__user_7__", "resource_type": t, "resource_pattern": r, "permission": p}
                    for (t, r), p in user["grants"].items()]
            rows.append({"role_name": "data-science", "resource_type": "experiment", "resource_pattern": "9",
                         "permission": "READ"})
            return self.answer(url, 200, {"is_admin": user["is_admin"], "permissions": rows})
        if path == "/api/3.0/mlflow/users/permissions/grant":
            grants = self.users[doc["username"]]["grants"]
            key = (doc["resource_type"], doc["resource_id"])
            if key in grants:
                return self.answer(url, 400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": "granted"})
            grants[key] = doc["permission"]
            return self.answer(url, 200, {})
        if path == "/api/3.0/mlflow/users/permissions/revoke":
            self.users[doc["username"]]["grants"].pop((doc["resource_type"], doc["resource_id"]), None)
            return self.answer(url, 200, {})
        return self.answer(url, 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path})

    def login(self, headers):
        value = dict(headers).get("Authorization", "")
        if not value.startswith("Basic "):
            return None
        name, sep, password = base64.b64decode(value[6:]).decode().partition(":")
        if not sep:
            return None
        user = self.users.get(name)
        return name if user is not None and user["password"] == password else None

    @staticmethod
    def answer(url, status, doc):
        return Response(status, json.dumps(doc).encode(), {"Content-Type": "application/json"}, url)


def params(**kw):
    base = dict(endpoints=["https://vip"], username=ADMIN[0], password=ADMIN[1], name="probe",
                user_password="probe-password-1", admin=False, permissions=[], exclusive=False, state="present",
                timeout=5.0, deadline=10.0, max_attempts=2, ca_path=None, validate_certs=True, client_cert=None,
                client_key=None)
    base.update(kw)
    return base


MANAGE_PROBE = [{"resource_type": "registered_model", "resource_id": "mlflow-ha-probe", "permission": "manage"}]


def run(server, clock, rng, check_mode=False, **kw):
    return mlflow_user.manage_user(params(**kw), check_mode, transport=server, clock=clock, rng=rng)


def test_a_new_user_is_created_with_its_grants_and_a_second_run_changes_nothing(clock, rng):
    server = FakeAuthServer(clock)
    first = run(server, clock, rng, permissions=MANAGE_PROBE)
    assert first["changed"] and first["created"]
    assert first["granted"] == [{"resource_type": "registered_model", "resource_id": "mlflow-ha-probe",
                                 "permission": "MANAGE"}]
    assert server.users["probe"]["password"] == "probe-password-1"
    assert server.users["probe"]["grants"] == {("registered_model", "mlflow-ha-probe"): "MANAGE"}
    server.writes.clear()
    second = run(server, clock, rng, permissions=MANAGE_PROBE)
    assert not second["changed"] and not server.writes


def test_a_password_that_no_longer_logs_in_is_set_again(clock, rng):
    server = FakeAuthServer(clock, {"probe": {"password": "an-older-password", "is_admin": False, "grants": {}}})
    result = run(server, clock, rng)
    assert result["changed"] and result["password_updated"]
    assert server.users["probe"]["password"] == "probe-password-1"


def test_a_different_permission_is_revoked_then_granted_and_other_grants_stay(clock, rng):
    grants = {("registered_model", "mlflow-ha-probe"): "READ", ("experiment", "3"): "EDIT"}
    server = FakeAuthServer(clock, {"probe": {"password": "probe-password-1", "is_admin": False, "grants": grants}})
    result = run(server, clock, rng, permissions=MANAGE_PROBE)
    assert result["revoked"] == [{"resource_type": "registered_model", "resource_id": "mlflow-ha-probe",
                                  "permission": "READ"}]
    assert server.users["probe"]["grants"] == {("registered_model", "mlflow-ha-probe"): "MANAGE",
                                               ("experiment", "3"): "EDIT"}


def test_exclusive_revokes_direct_grants_not_listed_but_not_those_of_roles(clock, rng):
    grants = {("experiment", "3"): "EDIT"}
    server = FakeAuthServer(clock, {"probe": {"password": "probe-password-1", "is_admin": False, "grants": grants}})
    result = run(server, clock, rng, exclusive=True)
    assert result["revoked"] == [{"resource_type": "experiment", "resource_id": "3", "permission": "EDIT"}]
    assert server.users["probe"]["grants"] == {}


def test_the_admin_flag_follows_the_option(clock, rng):
    server = FakeAuthServer(clock, {"probe": {"password": "probe-password-1", "is_admin": False, "grants": {}}})
    assert run(server, clock, rng, admin=True)["admin_updated"]
    assert server.users["probe"]["is_admin"] is True


def test_check_mode_reports_without_writing(clock, rng):
    server = FakeAuthServer(clock, {"probe": {"password": "an-older-password", "is_admin": False, "grants": {}}})
    result = run(server, clock, rng, check_mode=True, permissions=MANAGE_PROBE)
    assert result["changed"] and result["password_updated"] and result["granted"]
    assert not server.writes and server.users["probe"]["password"] == "an-older-password"
    new = run(FakeAuthServer(clock), clock, rng, check_mode=True, name="someone")
    assert new["created"]


def test_absent_deletes_an_existing_user_and_is_quiet_about_a_missing_one(clock, rng):
    server = FakeAuthServer(clock, {"probe": {"password": "x" * 12, "is_admin": False, "grants": {}}})
    assert run(server, clock, rng, state="absent")["removed"]
    assert "probe" not in server.users
    assert not run(server, clock, rng, state="absent")["changed"]


def test_a_missing_user_without_a_password_and_a_bad_permission_are_clear_errors(clock, rng):
    with pytest.raises(MlflowError, match="user_password is needed"):
        run(FakeAuthServer(clock), clock, rng, user_password=None)
    with pytest.raises(ValueError, match="not one of"):
        run(FakeAuthServer(clock), clock, rng, permissions=[{"resource_type": "experiment", "resource_id": "1",
                                                             "permission": "OWNER"}])


def test_a_wrong_admin_login_fails_with_the_servers_answer(clock, rng):
    with pytest.raises(Exception, match="401"):
        run(FakeAuthServer(clock), clock, rng, password="not-the-admin-password")
