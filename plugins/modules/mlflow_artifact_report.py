#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mlflow_artifact_report
short_description: Compare the MLflow registry's rows with the artifact bucket after a point-in-time restore
version_added: "0.1.0"
description:
  - Resolves every location the registry's rows name (model versions' C(storage_location) or C(source), also
    C(runs:/) and C(models:/) URIs; runs' C(artifact_uri); logged models' C(artifact_location); traces' location tags)
    to a path under MLflow's C(--artifacts-destination), and lists the bucket under it (C(rclone lsjson), upload times).
  - Reports the model versions with no object under their location (RV(missing_versions)), the objects uploaded after
    O(target_time) that no location holds (RV(orphans), grouped by the run, logged model or trace folder MLflow wrote
    them in), and, with O(backup), what the artifact backup (its mirror and history folders) would give back.
  - Reads only; changes and deletes nothing. Runs on the artifact backup host, with its rclone configuration.
author:
  - mlflow-ha developers (@mlflow-ha)
requirements:
  - rclone on the host (the artifact_backup role installs it)
options:
  backup:
    description: Also list the backup's bucket (mirror and history folders) and say which missing objects it holds.
    type: bool
    default: true
extends_documentation_fragment:
  - mlops.mlflow_ha.artifacts
  - mlops.mlflow_ha.info
notes:
  - Listing costs a request per folder (and per 1000 objects in one), for the bucket and, with O(backup), for the
    backup's bucket; the backup's copies of the objects to give back are asked for their kept modification time, one
    request each.
"""

EXAMPLES = r"""
- name: Compare the rows with the bucket after a restore to 17:55 UTC
  mlops.mlflow_ha.mlflow_artifact_report:
    rclone: "{{ artifact_backup_endpoints.rclone_argv }}"
    source: "{{ artifact_backup_endpoints.source }}"
    target: "{{ artifact_backup_endpoints.target }}"
    history_prefix: "{{ artifact_backup_endpoints.history_prefix }}"
    artifacts_destination: "{{ mlflow_endpoints.artifacts_destination }}"
    rows: "{{ artifact_rows }}"
    target_time: "2026-12-06 17:55:00+00"
  register: artifacts

- name: No version lost its artifacts
  ansible.builtin.assert:
    that: artifacts.missing_versions | length == 0
"""

RETURN = r"""
missing_versions:
  description:
    - Model versions with no object under their location. Each with C(name), C(version), C(source),
      C(storage_location), C(run_id), C(status), C(workspace), C(location) (the path under the destination),
      C(key_prefix) (the key in the bucket) and, with O(backup), C(backup_objects) and C(backup_origins) (V(mirror)
      or history folders).
  returned: success
  type: list
  elements: dict
unchecked_versions:
  description: Model versions whose location is not in this bucket (another store, or a row that is gone), with
    C(reason).
  returned: success
  type: list
  elements: dict
orphans:
  description:
    - Objects uploaded after O(target_time) (any, without one) that no row's location holds, grouped by folder. Each
      with C(prefix), C(key_prefix), C(kind) (run, logged_model, trace, other), C(id), C(experiment_id), C(objects),
      C(bytes), C(oldest), C(newest), C(whole_prefix) (every object of the folder is an orphan) and C(keys).
  returned: success
  type: list
  elements: dict
orphan_keys:
  description: Every orphan's key in the bucket.
  returned: success
  type: list
  elements: str
unreferenced_before_target:
  description: Unreferenced objects uploaded at or before O(target_time), grouped like RV(orphans) (not this restore's).
  returned: success
  type: list
  elements: dict
restorable:
  description:
    - With O(backup), the objects the backup would give back, each with C(key), C(path), C(origin), C(size),
      C(mtime) and C(owner) (C(kind), C(id), C(experiment_id)).
  returned: success
  type: list
  elements: dict
only_newer_in_backup:
  description: With O(backup), objects rows name and the bucket lacks whose every copy was written after O(target_time).
  returned: success
  type: list
  elements: dict
counts:
  description: The counts of each kind (versions, runs, objects, missing_versions, orphan_objects, orphan_groups, ...).
  returned: success
  type: dict
target_time:
  description: O(target_time) in UTC (C(YYYY-MM-DDTHH:MM:SSZ)), empty without one.
  returned: success
  type: str
artifacts_destination:
  description: O(artifacts_destination).
  returned: success
  type: str
summary:
  description: The same, as lines to read.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.artifact_audit import (
    AuditError,
    argument_spec,
    report,
)


def main():
    module = AnsibleModule(argument_spec=argument_spec(backup=dict(type="bool", default=True)),
                           supports_check_mode=True)

    def run(argv):
        return module.run_command(argv)

    try:
        facts = report(module.params, run)
    except AuditError as err:
        module.fail_json(msg="mlflow_artifact_report: %s" % err)
    module.exit_json(changed=False, **facts)


if __name__ == "__main__":
    main()
