#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mlflow_artifact_restore
short_description: Give back from the artifact backup what the MLflow registry's rows name and the bucket lacks
version_added: "0.1.0"
description:
  - Compares the rows with the bucket as M(mlops.mlflow_ha.mlflow_artifact_report) does, then lists the backup's bucket
    (the mirror the nightly C(rclone sync) keeps, and the history folders where each run moved what it deleted or
    replaced) and, for each object a row's location holds that the bucket lacks, chooses one copy. The newest copy
    written at or before O(target_time), all copies without one; among equals the mirror's, then the earliest history
    folder's. A copy's time is the modification time rclone kept with it, the object's upload time at the source.
  - Copies the chosen objects back with C(rclone copy --files-from-raw --no-traverse --ignore-existing), one run per
    origin, so an object the bucket has is never replaced and nothing is deleted; then lists the bucket for them
    again and reports what is there now (RV(restored)) and what is not (RV(not_restored), a failure).
  - Orphans are reported, never deleted.
author:
  - mlflow-ha developers (@mlflow-ha)
requirements:
  - rclone on the host (the artifact_backup role installs it)
options:
  transfers:
    description: Parallel transfers of each C(rclone copy).
    type: int
    default: 8
extends_documentation_fragment:
  - mlops.mlflow_ha.artifacts
attributes:
  check_mode:
    support: full
    description: In check mode it compares and plans (RV(restorable)) and copies nothing.
  diff_mode:
    support: none
    description: No diff; RV(restorable) lists what would be copied.
"""

EXAMPLES = r"""
- name: Give back the artifacts of the rows a restore to 17:55 UTC kept
  mlops.mlflow_ha.mlflow_artifact_restore:
    rclone: "{{ artifact_backup_endpoints.rclone_argv }}"
    source: "{{ artifact_backup_endpoints.source }}"
    target: "{{ artifact_backup_endpoints.target }}"
    history_prefix: "{{ artifact_backup_endpoints.history_prefix }}"
    artifacts_destination: "{{ mlflow_endpoints.artifacts_destination }}"
    rows: "{{ artifact_rows }}"
    target_time: "2026-12-06 17:55:00+00"
  register: restored
"""

RETURN = r"""
restorable:
  description:
    - The objects chosen to give back, each with C(key) (in the bucket), C(path) (under the destination), C(origin)
      (V(mirror) or a history folder), C(size), C(mtime) and C(owner) (C(kind), C(id), C(experiment_id)).
  returned: success
  type: list
  elements: dict
restored:
  description: Those of RV(restorable) that the bucket has after the copy.
  returned: success
  type: list
  elements: dict
not_restored:
  description: Those of RV(restorable) that it still lacks (the module fails when there are any).
  returned: always
  type: list
  elements: dict
copies:
  description: Each C(rclone copy) run, with C(origin), C(from), C(objects) and C(exit).
  returned: success
  type: list
  elements: dict
not_found:
  description: Model versions with no object under their location and nothing for it in the backup.
  returned: success
  type: list
  elements: dict
missing_versions:
  description: Model versions with no object under their location before the copy (as mlflow_artifact_report returns).
  returned: success
  type: list
  elements: dict
missing_versions_after:
  description: Those that still have no object after the copy (in check mode, RV(missing_versions)).
  returned: success
  type: list
  elements: dict
only_newer_in_backup:
  description: Objects rows name and the bucket lacks whose every copy was written after O(target_time); not copied.
  returned: success
  type: list
  elements: dict
orphans:
  description: As mlflow_artifact_report returns them; reported, never deleted.
  returned: success
  type: list
  elements: dict
counts:
  description: As mlflow_artifact_report returns them.
  returned: success
  type: dict
summary:
  description: What was found and done, as lines to read.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.artifact_audit import (
    AuditError,
    argument_spec,
    restore,
)


def main():
    module = AnsibleModule(argument_spec=argument_spec(transfers=dict(type="int", default=8)),
                           supports_check_mode=True)

    def run(argv):
        return module.run_command(argv)

    try:
        facts, failure = restore(module.params, run, module.check_mode)
    except AuditError as err:
        module.fail_json(msg="mlflow_artifact_restore: %s" % err)
    if failure:
        module.fail_json(msg="mlflow_artifact_restore: %s" % failure, **facts)
    module.exit_json(**facts)


if __name__ == "__main__":
    main()
