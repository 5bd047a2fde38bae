# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """Options of the modules that compare the registry's rows with the artifact bucket and its backup
    (mlflow_artifact_report, mlflow_artifact_restore; module_utils/artifact_audit.py)."""

    DOCUMENTATION = r"""
options:
  rclone:
    description:
      - The rclone command with the artifact backup's configuration and CA, as a list (the artifact_backup role's
        endpoints publish it as C(rclone_argv)).
    type: list
    elements: str
    required: true
  source:
    description: The artifact bucket as an rclone remote path, V(source:mlflow) (the artifact_backup endpoints'
      C(source)).
    type: str
    required: true
  target:
    description: The backup's bucket as an rclone remote path, V(target:mlflow-backup) (the endpoints' C(target)).
    type: str
    default: ""
  history_prefix:
    description:
      - The folder in the backup's bucket where each backup run moved what it deleted or replaced, one folder per run
        named by its start time (C(YYYYMMDDTHHMMSSZ), UTC).
    type: str
    default: _history
  artifacts_destination:
    description:
      - MLflow's C(--artifacts-destination), C(s3://<bucket>/<prefix>) (the mlflow role's endpoints publish it); its
        bucket must be the one O(source) names.
    type: str
    required: true
  rows:
    description:
      - The registry's rows that name artifacts, as playbooks/tasks/artifact_rows.yml reads them on the Patroni
        leader. Lists C(versions) (name, version, source, storage_location, run_id, status, current_stage,
        workspace), C(runs) (run_id, experiment_id, artifact_uri), C(logged_models) (model_id, experiment_id,
        artifact_location) and C(traces) (trace_id, location).
    type: dict
    required: true
  target_time:
    description:
      - The time the database was restored to, as restore_pgbackrest.yml takes it, V(2026-12-06 17:55:00+00) (the
        zone is required). Orphans are the unreferenced objects uploaded after it; copies in the backup written after
        it are not given back.
      - Empty, every unreferenced object is an orphan and the newest copy of an object is the one given back.
    type: str
    default: ""
  scope:
    description:
      - What the backup gives back. V(rows), every object under a location a row names (model versions, runs,
        logged models, traces) that the bucket lacks. V(versions), only objects under the locations of model versions
        that have no object at all.
    type: str
    default: rows
    choices: [rows, versions]
"""
