#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: etcd_auth
short_description: Make etcd's roles, users and grants match the inventory, then enable auth
version_added: "0.1.0"
description:
  - Through etcd's v3 JSON gateway (etcd 3.6; C(/v3/auth/*)), makes the user O(username) (C(root)) with the role
    C(root), and the roles O(roles) and users O(users), exist with exactly the permissions and roles given; then,
    with O(enabled), enables auth, last, so that nothing is refused before every user exists.
  - Logs in as O(username) with O(password) first. While auth is disabled etcd answers every login with "not
    enabled" and lets anyone manage users; once it is enabled, only C(root) may. When etcd refuses root's login the
    module fails and changes nothing; it never disables auth nor deletes a user or role.
  - A user's password is checked by logging in as that user and set again only when the login fails. While auth
    is disabled a login cannot tell, so an existing user's password is set again only in the run that enables
    auth (and reported in RV(passwords_updated)).
  - Users and roles not listed are left alone. The permissions of a listed role and the roles of a listed user
    are made exactly the listed ones (the C(root) role's implicit rights excepted).
  - Supports check mode (reads only, reports what would change) and diff (roles with their permissions, users with
    their roles, whether auth is enabled; never passwords).
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  endpoints:
    description: Client URLs of the cluster, tried in order.
    type: list
    elements: str
    required: true
  username:
    description: The admin user (it gets the role C(root)). etcd requires it to be named C(root) to enable auth.
    type: str
    default: root
  password:
    description: Password of O(username). Set when the user is created.
    type: str
    required: true
  roles:
    description: Roles and their permissions.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Role name.
        type: str
        required: true
      permissions:
        description: The role's permissions, exactly.
        type: list
        elements: dict
        default: []
        suboptions:
          key:
            description: The key, or the first key of the range.
            type: str
            required: true
          prefix:
            description:
              - Every key that starts with O(roles[].permissions[].key) (C(etcdctl role grant-permission --prefix)).
            type: bool
            default: false
          range_end:
            description: End of the range (excluded); empty for one key.
            type: str
            default: ""
          type:
            description: What the role may do with the keys.
            type: str
            choices: [read, write, readwrite]
            default: readwrite
  users:
    description: Users, their passwords and roles (O(username) is managed by the module itself).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: User name. Not an inventory host name, in case etcd ever runs with C(--client-cert-auth).
        type: str
        required: true
      password:
        description: The user's password.
        type: str
        required: true
      roles:
        description:
          - The user's roles, exactly. None is a user that may only log in, list the members and read each member's
            status (etcd 3.6.12 and later).
        type: list
        elements: str
        default: []
  enabled:
    description: Enable auth once every role and user is in place. False prepares them only (auth stays as it is).
    type: bool
    default: true
  timeout:
    description: Seconds one request may take.
    type: float
    default: 10
  deadline:
    description: Seconds each request may take over all endpoints, retries included.
    type: float
    default: 60
extends_documentation_fragment:
  - mlops.mlflow_ha.tls
notes:
  - A lost root password has no offline reset in etcd, and snapshots carry the users; keep it in the vault.
  - Changing a user's password ends the sessions of that user (Patroni logs in again with its configured
    password, so change it there first or restart Patroni after).
"""

EXAMPLES = r"""
- name: Patroni's user, a monitoring user, then auth on
  mlops.mlflow_ha.etcd_auth:
    endpoints: ["https://10.0.0.11:2379", "https://10.0.0.12:2379", "https://10.0.0.13:2379"]
    ca_path: /etc/etcd/tls/ca.crt
    client_cert: /etc/etcd/tls/etcd.crt
    client_key: /etc/etcd/tls/etcd.key
    password: "{{ vault_etcd_root_password }}"
    roles:
      - name: patroni
        permissions: [{key: /service/mlflow-ha/, prefix: true, type: readwrite}]
    users:
      - {name: patroni, password: "{{ vault_etcd_patroni_password }}", roles: [patroni]}
      - {name: monitor, password: "{{ vault_etcd_monitor_password }}"}
  run_once: true
"""

RETURN = r"""
auth_enabled:
  description: Whether auth is enabled (after this run; in check mode, after a real run).
  returned: always
  type: bool
enabled_now:
  description: Whether this run enabled auth.
  returned: always
  type: bool
roles_created:
  description: Roles created.
  returned: always
  type: list
  elements: str
users_created:
  description: Users created.
  returned: always
  type: list
  elements: str
granted:
  description: "Permissions granted, as C(role: readwrite /service/mlflow-ha/ (prefix))."
  returned: always
  type: list
  elements: str
revoked:
  description: Permissions revoked, in the same form.
  returned: always
  type: list
  elements: str
roles_granted:
  description: "Roles given to users, as C(user: role)."
  returned: always
  type: list
  elements: str
roles_revoked:
  description: "Roles taken from users, as C(user: role)."
  returned: always
  type: list
  elements: str
passwords_updated:
  description: Users whose password was set again.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.etcd import (
    EtcdAuthFailed,
    EtcdClient,
    Permission,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClientError,
    endpoint_list,
    tls_argument_spec,
    transport_from_params,
)

ROOT_ROLE = "root"


class EtcdAuthError(Exception):
    def __init__(self, message, facts):
        super().__init__(message)
        self.facts = facts


def wanted_roles(params):
    roles = {ROOT_ROLE: None}  # the root role: all keys and admin rights, no permissions of its own
    for role in params["roles"]:
        if role["name"] == ROOT_ROLE:
            raise ValueError("etcd_auth: the role root is etcd's own; do not list it in roles")
        roles[role["name"]] = sorted(set(Permission.from_spec(p) for p in role.get("permissions") or []))
    return roles


def wanted_users(params):
    users = {params["username"]: {"password": params["password"], "roles": [ROOT_ROLE]}}
    for user in params["users"]:
        if user["name"] == params["username"]:
            raise ValueError("etcd_auth: %s is the admin user (username); do not list it in users" % user["name"])
        users[user["name"]] = {"password": user["password"], "roles": sorted(set(user.get("roles") or []))}
    return users


def role_view(perms):
    return [p.describe() for p in perms or []]


def manage_auth(params, check_mode, transport=None, clock=None):
    """Return the module result; raise EtcdAuthError, HttpClientError or ValueError."""
    roles, users = wanted_roles(params), wanted_users(params)
    root, root_password = params["username"], params["password"]
    client = EtcdClient(endpoint_list(params["endpoints"]), transport=transport or transport_from_params(params),
                        clock=clock, request_timeout=params["timeout"], deadline=params["deadline"])
    result = {"changed": False, "auth_enabled": False, "enabled_now": False, "roles_created": [], "users_created": [],
              "granted": [], "revoked": [], "roles_granted": [], "roles_revoked": [], "passwords_updated": []}
    try:
        token = client.authenticate(root, root_password)
    except EtcdAuthFailed as err:
        raise EtcdAuthError("etcd_auth: etcd has auth enabled and refuses %s's login with the password given (%s). "
                            "The inventory's password is not etcd's; nothing was changed. Restore the password that "
                            "etcd has, or reset it with etcdctl as root." % (root, err), result) from err
    auth_on = token is not None
    if auth_on:
        client.username, client.password, client.token, client.auth_enabled = root, root_password, token, True
    enable_now = params["enabled"] and not auth_on
    before = {"auth_enabled": auth_on, "roles": {}, "users": {}}
    after = {"auth_enabled": auth_on or params["enabled"], "roles": {}, "users": {}}

    for name, perms in roles.items():
        current = client.role_get(name)
        before["roles"][name] = None if current is None else role_view(current if perms is not None else [])
        after["roles"][name] = role_view(perms)
        if current is None:
            if not check_mode:
                client.role_add(name)
            result["roles_created"].append(name)
            current = []
        if perms is None:
            continue
        for perm in perms:
            if perm not in current:
                if not check_mode:
                    client.role_grant(name, perm)
                result["granted"].append("%s: %s" % (name, perm.describe()))
        for perm in current:
            if perm not in perms:
                if not check_mode:
                    client.role_revoke(name, perm)
                result["revoked"].append("%s: %s" % (name, perm.describe()))

    for name, user in users.items():
        current = client.user_get(name)
        before["users"][name] = None if current is None else {"roles": current}
        after["users"][name] = {"roles": user["roles"]}
        if current is None:
            if not check_mode:
                client.user_add(name, user["password"])
            result["users_created"].append(name)
            current = []
        elif name != root or not auth_on:
            # With auth on, root's password was proven by the login above; the others by a login of their own.
            # With auth off nobody's can be checked: set them in the run that enables auth.
            stale = client.password_works(name, user["password"]) is False if auth_on else enable_now
            if stale:
                if not check_mode:
                    client.user_changepw(name, user["password"])
                result["passwords_updated"].append(name)
        for role in user["roles"]:
            if role not in current:
                if not check_mode:
                    client.user_grant(name, role)
                result["roles_granted"].append("%s: %s" % (name, role))
        for role in current:
            if role not in user["roles"]:
                if not check_mode:
                    client.user_revoke(name, role)
                result["roles_revoked"].append("%s: %s" % (name, role))

    if enable_now:
        if not check_mode:
            client.auth_enable()
            try:
                proof = client.authenticate(root, root_password)
            except EtcdAuthFailed as err:
                raise EtcdAuthError("etcd_auth: auth is enabled but %s cannot log in: %s" % (root, err),
                                    result) from err
            if proof is None:
                raise EtcdAuthError("etcd_auth: etcd took the request to enable auth but still says it is not "
                                    "enabled", result)
        result["enabled_now"] = True
    result["auth_enabled"] = after["auth_enabled"]
    result["changed"] = bool(result["enabled_now"] or result["roles_created"] or result["users_created"]
                             or result["granted"] or result["revoked"] or result["roles_granted"]
                             or result["roles_revoked"] or result["passwords_updated"])
    result["diff"] = {"before": before, "after": after}
    return result


def main():
    permission = dict(key=dict(type="str", required=True, no_log=False), prefix=dict(type="bool", default=False),
                      range_end=dict(type="str", default=""),
                      type=dict(type="str", default="readwrite", choices=["read", "write", "readwrite"]))
    module = AnsibleModule(
        argument_spec=dict(
            **tls_argument_spec(),
            endpoints=dict(type="list", elements="str", required=True),
            username=dict(type="str", default="root"),
            password=dict(type="str", required=True, no_log=True),
            roles=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                permissions=dict(type="list", elements="dict", default=[], options=permission),
            )),
            users=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                password=dict(type="str", required=True, no_log=True),
                roles=dict(type="list", elements="str", default=[]),
            )),
            enabled=dict(type="bool", default=True),
            timeout=dict(type="float", default=10),
            deadline=dict(type="float", default=60),
        ),
        required_by={"client_key": "client_cert"},
        supports_check_mode=True,
    )
    try:
        result = manage_auth(module.params, module.check_mode)
    except EtcdAuthError as err:
        module.fail_json(msg=str(err), **err.facts)
    except HttpClientError as err:
        module.fail_json(msg="etcd_auth: %s" % err, **err.to_dict())
    except ValueError as err:
        module.fail_json(msg=str(err))
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
