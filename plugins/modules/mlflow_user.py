#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mlflow_user
short_description: Manage a user of MLflow's basic-auth app, its password, admin flag and permissions
version_added: "0.1.0"
description:
  - Makes a user of MLflow's basic-auth app (MLflow 3.17) exist with O(user_password), O(admin) and the grants in
    O(permissions), or not exist (O(state=absent)); logs in as O(username), an admin.
  - The password is checked by logging in as the user (MLflow never shows a stored password) and set again by the
    admin only when that login fails, so a run with the same values changes nothing.
  - Grants are the user's direct grants (MLflow's C(/api/3.0/mlflow/users/permissions) API). A grant whose
    permission differs is revoked and granted again (MLflow has no update); grants not listed are left alone
    unless O(exclusive) is set.
  - Supports check mode; every request goes through the collection's resilient client (retries with backoff,
    circuit breaker per endpoint, failover between O(endpoints)).
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  endpoints:
    description: Tracking server URLs (the load balancer's first), tried in order.
    type: list
    elements: str
    required: true
  username:
    description: Admin user the module logs in as.
    type: str
    required: true
  password:
    description: Password of O(username).
    type: str
    required: true
  name:
    description: The user to manage.
    type: str
    required: true
  user_password:
    description:
      - The user's password (at least 12 characters, MLflow's rule). Required with O(state=present) for a user
        that does not exist yet; when given for an existing user, set again when a login with it fails.
    type: str
  admin:
    description: Whether the user is an admin (every permission everywhere).
    type: bool
    default: false
  permissions:
    description:
      - Direct grants, each C({resource_type, resource_id, permission}). C(resource_type) V(experiment) takes the
        experiment id, V(registered_model) the model name; C(permission) is one of V(READ), V(USE), V(EDIT),
        V(MANAGE), V(DENY).
    type: list
    elements: dict
    default: []
  exclusive:
    description: Revoke the user's direct grants that O(permissions) does not list.
    type: bool
    default: false
  state:
    description: Whether the user exists.
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description: Seconds one request may take.
    type: float
    default: 10
  deadline:
    description: Seconds each step may take, retries included.
    type: float
    default: 60
  max_attempts:
    description: Requests to make at most per step, over all endpoints.
    type: int
    default: 5
extends_documentation_fragment:
  - mlops.mlflow_ha.tls
"""

EXAMPLES = r"""
- name: A user for the registration probe, with its own experiment and model
  mlops.mlflow_ha.mlflow_user:
    endpoints: ["https://10.10.0.40"]
    ca_path: /usr/local/share/ca-certificates/mlflow-ha-ca.crt
    username: admin
    password: "{{ vault_mlflow_admin_password }}"
    name: mlflow-probe
    user_password: "{{ vault_mlflow_probe_password }}"
    permissions:
      - {resource_type: registered_model, resource_id: mlflow-ha-probe, permission: MANAGE}
  no_log: true
"""

RETURN = r"""
created:
  description: Whether the user was created.
  returned: always
  type: bool
removed:
  description: Whether the user was deleted.
  returned: always
  type: bool
password_updated:
  description: Whether the password was set again (a login with O(user_password) had failed).
  returned: always
  type: bool
admin_updated:
  description: Whether the admin flag changed.
  returned: always
  type: bool
granted:
  description: Grants made, each C({resource_type, resource_id, permission}).
  returned: always
  type: list
  elements: dict
revoked:
  description: Grants revoked, each C({resource_type, resource_id, permission}).
  returned: always
  type: list
  elements: dict
"""

from urllib.parse import urlencode

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError, tls_argument_spec
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import (
    API,
    DOES_NOT_EXIST,
    MlflowError,
    client_from_params,
    mlflow_error,
)

API3 = "/api/3.0/mlflow"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "DENY")
# MLflow keeps a user's direct grants in a role of its own, named after the user's id.
DIRECT_ROLE_PREFIX = "__user_"


def _status(err):
    return err.response.status if err.response is not None else None


def get_user(client, name):
    """The user's record, or None when MLflow has no such user."""
    try:
        response = client.request("GET", "%s/users/get?%s" % (API, urlencode({"username": name})))
    except HttpClientError as err:
        if err.response is not None and mlflow_error(err.response)[0] == DOES_NOT_EXIST:
            return None
        raise
    doc = client.json(response)
    return doc.get("user") if isinstance(doc, dict) else None


def password_works(params, name, password, transport=None, clock=None, rng=None):
    """Whether MLflow accepts ``password`` for ``name`` (a login as the user; 401 means no)."""
    as_user = client_from_params(dict(params, username=name, password=password), transport=transport,
                                 clock=clock, rng=rng)
    try:
        as_user.request("GET", API + "/users/current")
    except HttpClientError as err:
        if _status(err) == 401:
            return False
        raise
    return True


def direct_grants(client, name):
    """{(resource_type, resource_id): permission} of the user's own grants (not those of roles given to it)."""
    response = client.request("GET", "%s/users/permissions/list?%s" % (API3, urlencode({"username": name})))
    doc = client.json(response)
    grants = {}
    for row in (doc.get("permissions") or []) if isinstance(doc, dict) else []:
        if str(row.get("role_name", "")).startswith(DIRECT_ROLE_PREFIX):
            grants[(str(row.get("resource_type")), str(row.get("resource_pattern")))] = str(row.get("permission"))
    return grants


def wanted_grants(permissions):
    wanted = {}
    for p in permissions:
        missing = [k for k in ("resource_type", "resource_id", "permission") if not p.get(k)]
        if missing:
            raise ValueError("mlflow_user: a permission needs %s: %s" % (", ".join(missing), p))
        permission = str(p["permission"]).upper()
        if permission not in PERMISSIONS:
            raise ValueError("mlflow_user: permission %r is not one of %s" % (p["permission"], ", ".join(PERMISSIONS)))
        wanted[(str(p["resource_type"]), str(p["resource_id"]))] = permission
    return wanted


def grant_dict(key, permission):
    return {"resource_type": key[0], "resource_id": key[1], "permission": permission}


def manage_user(params, check_mode, transport=None, clock=None, rng=None):
    """Return the module result; raise MlflowError, HttpClientError or ValueError."""
    client = client_from_params(params, transport=transport, clock=clock, rng=rng)
    name = params["name"]
    result = {"changed": False, "user": name, "created": False, "removed": False, "password_updated": False,
              "admin_updated": False, "granted": [], "revoked": []}
    user = get_user(client, name)
    if params["state"] == "absent":
        if user is not None:
            if not check_mode:
                client.request("DELETE", API + "/users/delete", json_body={"username": name}, idempotent=True)
            result.update(changed=True, removed=True)
        return result

    wanted = wanted_grants(params["permissions"])
    password = params["user_password"]
    if user is None:
        if not password:
            raise MlflowError("mlflow_user: %s does not exist; user_password is needed to create it" % name, result)
        if not check_mode:
            client.request("POST", API + "/users/create", json_body={"username": name, "password": password},
                           idempotent=False)
        result.update(changed=True, created=True)
        user = {"username": name, "is_admin": False}
        current = {}
    else:
        stale = password and name != params["username"] and not password_works(
            params, name, password, transport, clock, rng)
        if stale:
            if not check_mode:
                client.request("PATCH", API + "/users/update-password",
                               json_body={"username": name, "password": password}, idempotent=True)
            result.update(changed=True, password_updated=True)
        current = direct_grants(client, name)

    if bool(user.get("is_admin")) != params["admin"]:
        if not check_mode:
            client.request("PATCH", API + "/users/update-admin",
                           json_body={"username": name, "is_admin": params["admin"]}, idempotent=True)
        result.update(changed=True, admin_updated=True)

    for key, permission in sorted(wanted.items()):
        if current.get(key) == permission:
            continue
        if key in current:
            if not check_mode:
                revoke(client, name, key)
            result["revoked"].append(grant_dict(key, current[key]))
        if not check_mode:
            client.request("POST", API3 + "/users/permissions/grant",
                           json_body=dict(grant_dict(key, permission), username=name), idempotent=False)
        result["granted"].append(grant_dict(key, permission))
    if params["exclusive"]:
        for key in sorted(set(current) - set(wanted)):
            if not check_mode:
                revoke(client, name, key)
            result["revoked"].append(grant_dict(key, current[key]))
    if result["granted"] or result["revoked"]:
        result["changed"] = True
    return result


def revoke(client, name, key):
    client.request("POST", API3 + "/users/permissions/revoke",
                   json_body={"username": name, "resource_type": key[0], "resource_id": key[1]}, idempotent=True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **tls_argument_spec(),
            endpoints=dict(type="list", elements="str", required=True),
            username=dict(type="str", required=True),
            password=dict(type="str", required=True, no_log=True),
            name=dict(type="str", required=True),
            user_password=dict(type="str", no_log=True),
            admin=dict(type="bool", default=False),
            permissions=dict(type="list", elements="dict", default=[]),
            exclusive=dict(type="bool", default=False),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            timeout=dict(type="float", default=10),
            deadline=dict(type="float", default=60),
            max_attempts=dict(type="int", default=5),
        ),
        required_by={"client_key": "client_cert"},
        supports_check_mode=True,
    )
    try:
        result = manage_user(module.params, module.check_mode)
    except MlflowError as err:
        module.fail_json(msg=str(err), **err.facts)
    except HttpClientError as err:
        module.fail_json(msg="mlflow_user %s: %s" % (module.params["name"], err), **err.to_dict())
    except ValueError as err:
        module.fail_json(msg=str(err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
