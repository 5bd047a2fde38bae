#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pg_write_probe
short_description: Write rows through a PostgreSQL endpoint, measure outages, prove no acknowledged write is lost
version_added: "0.1.0"
description:
  - Inserts one row per O(interval) through O(login_host):O(login_port) (HAProxy's primary port, normally) on a
    fresh or reused connection, with TCP keepalives and a statement timeout, and records which commits were
    acknowledged and when writes failed.
  - Stops after O(duration) seconds, or with O(expect_outage) as soon as an outage has ended and writes have
    succeeded again for O(settle) seconds.
  - Then reads back every row of this run; an acknowledged row that is missing is a lost write.
  - Meant to run in the background (C(async)) while a chaos step kills a node.
author:
  - mlflow-ha developers (@mlflow-ha)
requirements:
  - psycopg2 (Debian's C(python3-psycopg2), or C(psycopg2-binary)) where the module runs
options:
  login_host:
    description: Host to connect to.
    type: str
    required: true
  login_port:
    description: Port to connect to.
    type: int
    default: 5000
  login_user:
    description: User to connect as (needs CREATE on the database's public schema the first time).
    type: str
    required: true
  login_password:
    description: Its password.
    type: str
    required: true
  database:
    description: Database to write to.
    type: str
    default: postgres
  table:
    description: Table for probe rows; created when missing.
    type: str
    default: mlflow_ha_write_probe
  duration:
    description: Seconds to write at most.
    type: float
    default: 120
  interval:
    description: Seconds between writes.
    type: float
    default: 0.2
  expect_outage:
    description: Stop once an outage has come and gone (plus O(settle) seconds of good writes).
    type: bool
    default: false
  settle:
    description: Seconds of successful writes after an outage before stopping (with O(expect_outage)).
    type: float
    default: 5
  connect_timeout:
    description: Seconds a connection attempt may take.
    type: int
    default: 2
  statement_timeout_ms:
    description: Server-side limit for each statement, in milliseconds.
    type: int
    default: 3000
  verify_timeout:
    description: Seconds to keep trying to read the rows back.
    type: float
    default: 60
attributes:
  check_mode:
    support: none
    description: The probe writes rows, so Ansible skips it in check mode.
  diff_mode:
    support: none
    description: No diff; the rows are test data.
"""

EXAMPLES = r"""
- name: Write through HAProxy while the primary is killed
  mlops.mlflow_ha.pg_write_probe:
    login_host: "{{ lb_vip }}"
    login_port: 5000
    login_user: mlflow
    login_password: "{{ vault_mlflow_db_password }}"
    database: mlflow
    duration: 180
    expect_outage: true
  async: 240
  poll: 0
  register: probe_job
  delegate_to: localhost

- name: Kill the primary here, then collect the probe
  ansible.builtin.async_status:
    jid: "{{ probe_job.ansible_job_id }}"
  register: probe
  until: probe is finished
  retries: 120
  delay: 2
  delegate_to: localhost
"""

RETURN = r"""
run:
  description: Identifier of this run's rows.
  returned: always
  type: str
attempts:
  description: Writes attempted.
  returned: always
  type: int
acknowledged_count:
  description: Writes whose commit was acknowledged.
  returned: always
  type: int
failed_count:
  description: Writes that failed (connection refused or lost, timeout, read-only server, ...).
  returned: always
  type: int
outages:
  description: Each period when writes failed, from the last good write before to the first good one after.
  returned: always
  type: list
  elements: dict
longest_outage_seconds:
  description: Length of the longest finished outage.
  returned: always
  type: float
recovered:
  description: Whether writes succeeded again after the last outage.
  returned: always
  type: bool
lost:
  description: Acknowledged writes that are not in the table afterwards (must be empty).
  returned: always
  type: list
  elements: int
lost_count:
  description: Number of lost writes.
  returned: always
  type: int
unacknowledged_present:
  description: Writes reported as failed that were committed anyway (the answer was lost, not the row).
  returned: always
  type: list
  elements: int
verified:
  description: Whether the rows could be read back.
  returned: always
  type: bool
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.pg_probe import WriteProbe

PSYCOPG2_IMPORT_ERROR = None
try:
    import psycopg2
except ImportError:
    psycopg2 = None
    PSYCOPG2_IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            login_host=dict(type="str", required=True),
            login_port=dict(type="int", default=5000),
            login_user=dict(type="str", required=True),
            login_password=dict(type="str", required=True, no_log=True),
            database=dict(type="str", default="postgres"),
            table=dict(type="str", default="mlflow_ha_write_probe"),
            duration=dict(type="float", default=120),
            interval=dict(type="float", default=0.2),
            expect_outage=dict(type="bool", default=False),
            settle=dict(type="float", default=5),
            connect_timeout=dict(type="int", default=2),
            statement_timeout_ms=dict(type="int", default=3000),
            verify_timeout=dict(type="float", default=60),
        ),
        supports_check_mode=False,
    )
    if psycopg2 is None:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMPORT_ERROR)
    p = module.params
    if not p["table"].replace("_", "").isalnum():
        module.fail_json(msg="table must be a plain identifier (letters, digits, _), got %r" % p["table"])

    def connect():
        return psycopg2.connect(host=p["login_host"], port=p["login_port"], user=p["login_user"],
                                password=p["login_password"], dbname=p["database"],
                                connect_timeout=p["connect_timeout"], keepalives=1, keepalives_idle=2,
                                keepalives_interval=1, keepalives_count=2,
                                application_name="mlflow-ha-write-probe")

    probe = WriteProbe(connect, table=p["table"], statement_timeout_ms=p["statement_timeout_ms"])
    endpoint = "%s:%s" % (p["login_host"], p["login_port"])
    try:
        probe.prepare(timeout=p["verify_timeout"])
    except psycopg2.Error as err:
        module.fail_json(msg="PostgreSQL at %s: cannot create the probe table %s within %s s: %s"
                         % (endpoint, p["table"], p["verify_timeout"], str(err).strip()))
    result = probe.run(p["duration"], p["interval"], p["expect_outage"], p["settle"])
    probe.verify(result, timeout=p["verify_timeout"])
    facts = result.to_dict()
    if not result.verified:
        module.fail_json(msg="PostgreSQL at %s: could not read the probe rows back within %s s: %s"
                         % (endpoint, p["verify_timeout"], result.verify_error), changed=True, **facts)
    if result.lost:
        module.fail_json(msg="PostgreSQL at %s: %d acknowledged writes are missing after the run: %s"
                         % (endpoint, len(result.lost), result.lost[:20]), changed=True, **facts)
    if p["expect_outage"] and result.outages and not facts["recovered"]:
        module.fail_json(msg="PostgreSQL at %s: writes had not recovered when the probe stopped after %s s; "
                         "first error: %s" % (endpoint, p["duration"], result.outages[-1].first_error),
                         changed=True, **facts)
    module.exit_json(changed=True, **facts)


if __name__ == "__main__":
    main()
