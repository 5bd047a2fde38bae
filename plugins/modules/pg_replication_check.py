#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pg_replication_check
short_description: Prove PostgreSQL replication by writing a marker on the primary and reading it on replicas
version_added: "0.1.0"
description:
  - Connects to the write endpoint O(primary) (e.g. the load balancer's read-write port), creates the marker
    table if it is missing, inserts one row with a fresh UUID and the primary's C(now()), deletes markers
    older than a day and commits, all in one transaction.
  - Then polls every replica in O(replicas) until the marker is visible there, and reports per replica
    whether and after how many seconds it was. Fails naming the replicas that did not see the marker within
    O(timeout), with the last error each one gave.
  - Also reports the primary's view of its standbys from C(pg_stat_replication), with the replay lag in bytes.
  - Every connection uses TCP keepalives, C(tcp_user_timeout) and O(connect_timeout), so a frozen server ends
    in an error, not a hung task. A commit that waits for a synchronous standby longer than O(timeout) is
    cancelled and reported.
author:
  - mlflow-ha developers (@mlflow-ha)
requirements:
  - psycopg2 (Debian's C(python3-psycopg2)) on the host that runs the task
options:
  primary:
    description:
      - The write endpoint, as V(host:port) or a dict with C(host), C(port) and an optional C(name).
        The connection requires a read-write session (C(target_session_attrs=read-write)).
    type: raw
    required: true
  replicas:
    description:
      - Endpoints to read the marker from, each V(host:port) or a dict with C(host), C(port), C(name).
    type: list
    elements: raw
    default: []
  login_user:
    description:
      - Role to connect as. It needs CREATE on the database (first run), INSERT/DELETE/SELECT on the table,
        and membership in C(pg_monitor) to see the columns of C(pg_stat_replication).
    type: str
    required: true
  login_password:
    description: Password of O(login_user).
    type: str
  database:
    description: Database that holds the marker table.
    type: str
    default: postgres
  table:
    description: Marker table, a plain lower-case identifier, optionally schema-qualified.
    type: str
    default: mlflow_ha_replication_check
  timeout:
    description: Seconds every replica has to show the marker, counted from the commit.
    type: float
    default: 30
  poll_interval:
    description: Seconds between two reads on the replicas.
    type: float
    default: 0.5
  connect_timeout:
    description: Seconds one connection attempt may take (libpq rounds up to whole seconds, at least 2).
    type: float
    default: 5
attributes:
  check_mode:
    support: full
    description: Writes nothing; only reports the primary's C(pg_stat_replication).
  diff_mode:
    support: none
    description: The only change is a marker row; there is nothing useful to diff.
"""

EXAMPLES = r"""
- name: A write through the VIP reaches every replica within 10 s
  mlops.mlflow_ha.pg_replication_check:
    primary: "{{ lb_vip }}:5000"
    replicas: ["10.0.0.22:5432", {"host": "10.0.0.23", "port": 5432, "name": "pg3"}]
    login_user: replication_checker
    login_password: "{{ pg_checker_password }}"
    timeout: 10
  register: repl

- name: No standby lags more than 16 MiB
  ansible.builtin.assert:
    that: repl.standbys | map(attribute='replay_lag_bytes') | max < 16777216
"""

RETURN = r"""
primary:
  description: The primary endpoint as host:port (or its name).
  returned: always
  type: str
marker:
  description: The marker written; null in check mode.
  returned: always
  type: str
  sample: 0b6c1c7e-5d2e-4d55-9c1a-4f0f6f2f4e61
written_at:
  description: The primary's C(now()) at the insert, as text.
  returned: always
  type: str
replicas:
  description: Per replica, whether the marker became visible and after how long; empty in check mode.
  returned: always
  type: list
  elements: dict
  contains:
    replica:
      description: The replica as host:port (or its name).
      type: str
    visible:
      description: The marker was read on the replica within the timeout.
      type: bool
    seconds_to_visible:
      description: Seconds from the commit to the read that saw the marker (poll granularity).
      type: float
    polls:
      description: Reads made on the replica.
      type: int
    last_error:
      description: The last error the replica gave, if any.
      type: str
standbys:
  description: The primary's C(pg_stat_replication), one entry per standby.
  returned: always
  type: list
  elements: dict
  contains:
    application_name:
      description: The standby's application_name (Patroni sets the member name).
      type: str
    client_addr:
      description: The standby's address.
      type: str
    state:
      description: WAL sender state, e.g. C(streaming).
      type: str
    sync_state:
      description: C(async), C(sync), C(quorum) or C(potential).
      type: str
    replay_lag_bytes:
      description: C(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)); null before the first replay.
      type: int
    replay_lag_seconds:
      description: C(replay_lag) in seconds; null when idle.
      type: float
deleted_markers:
  description: Old markers removed in the same transaction.
  returned: always
  type: int
commit_cancelled:
  description: The commit waited longer than O(timeout) for a synchronous standby and was cancelled.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.postgres import (
    HAS_PSYCOPG2,
    PSYCOPG2_IMPORT_ERROR,
    PostgresCheckError,
    ReplicationChecker,
    parse_endpoint,
)


def replication_check(params, check_mode, connect=None, clock=None):
    """Return (result, failure sentence or None); raise PostgresCheckError or ValueError."""
    checker = ReplicationChecker(
        parse_endpoint(params["primary"]),
        [parse_endpoint(r) for r in params["replicas"]],
        params["login_user"],
        params["login_password"],
        database=params["database"],
        table=params["table"],
        timeout=params["timeout"],
        poll_interval=params["poll_interval"],
        connect_timeout=params["connect_timeout"],
        connect=connect,
        clock=clock,
    )
    done = checker.run(check_mode=check_mode)
    return done.to_dict(), done.failure(params["timeout"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            primary=dict(type="raw", required=True),
            replicas=dict(type="list", elements="raw", default=[]),
            login_user=dict(type="str", required=True),
            login_password=dict(type="str", no_log=True),
            database=dict(type="str", default="postgres"),
            table=dict(type="str", default="mlflow_ha_replication_check"),
            timeout=dict(type="float", default=30),
            poll_interval=dict(type="float", default=0.5),
            connect_timeout=dict(type="float", default=5),
        ),
        supports_check_mode=True,
    )
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2 (Debian: python3-psycopg2)"),
                         exception=str(PSYCOPG2_IMPORT_ERROR))
    try:
        result, failure = replication_check(module.params, module.check_mode)
    except (PostgresCheckError, ValueError) as err:
        module.fail_json(msg=str(err), replicas=[], standbys=[])
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
