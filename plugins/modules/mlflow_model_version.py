#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mlflow_model_version
short_description: Register a model version in MLflow exactly once per idempotency key, optionally with an alias
version_added: "0.1.0"
description:
  - Registers a version of the registered model O(name) (created when missing) from O(source), or from a local
    O(artifact) that is first uploaded through the tracking server's artifact proxy into a run's artifact root and
    read back to compare its SHA-256 byte for byte.
  - Every version made here carries the tag C(mlflow_ha.idempotency_key). The key is searched for first; when a
    version carries it, that version is returned and nothing is created, so a rerun of an unchanged task changes
    nothing. The default key is derived from O(name), O(source) (or the artifact's SHA-256) and O(run_id).
  - Creating a version is not idempotent. The create request is never repeated by the HTTP client once it may
    have reached a server; after a timeout, a reset or a 5xx answer the key is searched again (across
    O(endpoints), with retries) and the create is sent again only when the search says the key is absent.
  - When several versions carry the key (registered by someone else with the same key), the lowest is returned
    and the others are listed in RV(duplicates).
  - With O(alias), points the alias at the version unless it already does.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  endpoints:
    description:
      - Base URLs of the tracking server, the load balancer's VIP first, then the servers themselves, e.g.
        V(https://10.0.0.100:5000). Tried in order while connections are refused.
    type: list
    elements: str
    required: true
  name:
    description: Registered model name (MLflow forbids V(/) and V(:) in it).
    type: str
    required: true
  source:
    description:
      - Required (or O(artifact)) with O(state=present).
      - Where the model is, e.g. V(runs:/<run_id>/model), V(models:/<model_id>) or V(s3://mlflow/models/churn).
      - MLflow 3.17 refuses a local path (V(models/churn), V(/srv/churn), V(file:///...)) and a source in its own
        artifact store (V(mlflow-artifacts:/...)) unless O(run_id) names the run whose artifact root contains it.
    type: str
  artifact:
    description:
      - A file on the host where the module runs, uploaded under O(artifact_path) in the artifact root of the run
        O(run_id) through C(PUT /api/2.0/mlflow-artifacts/artifacts/...) before the version is created; the
        source is then that directory. Needs a server that proxies artifacts (C(--serve-artifacts)).
      - Without O(run_id), the file goes into a registration run in O(experiment_id), named
        C(mlflow_ha registration of <name>) and tagged with the idempotency key; like the version, it is searched
        for first and created at most once per key, then marked C(FINISHED).
      - The file is read into memory whole.
    type: path
  artifact_path:
    description:
      - Directory below the run's artifact root for O(artifact); defaults to C(registrations/<name>/<key>).
    type: str
  run_id:
    description: Run the version comes from; with O(artifact), the run whose artifact root receives the file.
    type: str
  experiment_id:
    description: Experiment of the registration run made for an O(artifact) without O(run_id).
    type: str
    default: "0"
  description:
    description: Description of the new version.
    type: str
  idempotency_key:
    description:
      - Identifies this registration; a version carrying it is never created twice. Defaults to a digest of
        O(name), O(source) or the SHA-256 of O(artifact), and O(run_id). It must not contain both quote characters
        or end in a backslash (MLflow's search filter cannot express such a value).
    type: str
  alias:
    description: Alias to point at the version, e.g. V(champion).
    type: str
  tags:
    description: Tags of the new version (values are sent as strings), besides the idempotency key.
    type: dict
  username:
    description: User of MLflow's basic-auth app (C(--app-name basic-auth)).
    type: str
  password:
    description: Password of O(username).
    type: str
  timeout:
    description: Seconds one request may take (an artifact upload too).
    type: float
    default: 10
  deadline:
    description: Seconds the whole registration may take, searches, uploads, retries and waits included.
    type: float
    default: 120
  max_attempts:
    description:
      - Rounds at most (each a search while a version may exist, then a create), and requests at most for each
        search, upload or create over all O(endpoints).
    type: int
    default: 5
  state:
    description:
      - V(present) registers the version (the default). V(absent) deletes every version of O(name) carrying
        O(idempotency_key), and the registration runs made for that key in O(experiment_id) (MLflow marks runs
        deleted; C(mlflow gc) removes them and their artifacts later). With V(absent), O(idempotency_key) is
        required and O(source) and O(artifact) are not used.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - mlops.mlflow_ha.tls
attributes:
  check_mode:
    support: full
    description: Searches for the key and reads the alias; reports what would be created or moved, writes nothing.
  diff_mode:
    support: none
    description: The change is a new version, reported in RV(version) and RV(created), not as a diff.
notes:
  - The search is by tag, so a version whose C(mlflow_ha.idempotency_key) tag was removed or changed is not found
    and a new one is created.
  - A create that timed out may still commit on the server later; the module waits the request timeout before it
    searches again, which narrows but cannot close that window. A duplicate made that way is found on the next run
    and reported in RV(duplicates).
"""

EXAMPLES = r"""
- name: Register the trained model once, however often the play runs
  mlops.mlflow_ha.mlflow_model_version:
    endpoints: ["https://{{ lb_vip }}:5000", "https://10.0.0.31:5000", "https://10.0.0.32:5000"]
    ca_path: /etc/ssl/certs/mlflow-ha-ca.crt
    username: admin
    password: "{{ vault_mlflow_admin_password }}"
    name: churn
    source: "runs:/{{ run_id }}/model"
    run_id: "{{ run_id }}"
    alias: champion
  register: churn

- name: Upload a model file (into a registration run) and register it
  mlops.mlflow_ha.mlflow_model_version:
    endpoints: ["https://{{ lb_vip }}:5000"]
    name: churn
    artifact: /srv/models/churn.onnx
  register: uploaded

- name: The artifact came back byte for byte
  ansible.builtin.assert:
    that:
      - uploaded.artifact_verified or not uploaded.created
      - uploaded.duplicates == []

- name: Remove a check registration again (its versions and its registration run)
  mlops.mlflow_ha.mlflow_model_version:
    endpoints: ["https://{{ lb_vip }}:5000"]
    name: smoke-test
    idempotency_key: "{{ uploaded.idempotency_key }}"
    state: absent
"""

RETURN = r"""
removed_versions:
  description: With O(state=absent), the version numbers deleted (or that would be, in check mode).
  returned: when state is absent
  type: list
  elements: int
removed_runs:
  description: With O(state=absent), the registration runs marked deleted (or that would be, in check mode).
  returned: when state is absent
  type: list
  elements: str
name:
  description: The registered model.
  returned: always
  type: str
  sample: churn
version:
  description: The version carrying the key; null in check mode when it would be created.
  returned: always
  type: int
  sample: 3
created:
  description: This run created the version (in check mode, would create it).
  returned: always
  type: bool
status:
  description: The version's status as MLflow reports it, e.g. C(READY).
  returned: always
  type: str
source:
  description: The version's source (for O(artifact), the directory it was uploaded to).
  returned: always
  type: str
  sample: mlflow-artifacts:/0/9a40204b711c4d00a887fa7c9be7bc4c/artifacts/registrations/churn/3f2a...
run_id:
  description: The version's run (for O(artifact) without O(run_id), the registration run).
  returned: always
  type: str
idempotency_key:
  description: The key searched for and tagged (C(mlflow_ha.idempotency_key)).
  returned: always
  type: str
  sample: 5d41402abc4b2a76b9719d911017c592
endpoint:
  description: Base URL that answered the create, or the search that found the version.
  returned: always
  type: str
attempts:
  description:
    - Create requests sent; 0 when the version existed. One request may have been tried on several endpoints
      while their connections were refused.
  returned: always
  type: int
searches:
  description: Searches for the key that were answered.
  returned: always
  type: int
seconds:
  description: Seconds the registration took, alias included.
  returned: always
  type: float
duplicates:
  description: Other versions carrying the same key (higher than RV(version)); empty normally.
  returned: always
  type: list
  elements: int
registered_model_created:
  description: The registered model did not exist and was created.
  returned: always
  type: bool
run_created:
  description: A registration run was created for O(artifact) (no O(run_id) given, none with the key existed).
  returned: always
  type: bool
alias:
  description: The alias asked for.
  returned: always
  type: str
alias_previous_version:
  description: The version the alias pointed at before; null when it was not set (or not read).
  returned: always
  type: int
alias_changed:
  description: The alias was (in check mode, would be) moved to RV(version).
  returned: always
  type: bool
artifact_sha256:
  description: SHA-256 of O(artifact); null without one.
  returned: always
  type: str
artifact_size:
  description: Size of O(artifact) in bytes.
  returned: always
  type: int
artifact_uri:
  description: Where the artifact file was uploaded to (O(artifact) only, when a version was created).
  returned: always
  type: str
artifact_uploaded:
  description: The artifact was uploaded by this run.
  returned: always
  type: bool
artifact_verified:
  description: The uploaded artifact was read back with the same SHA-256; null when nothing was uploaded.
  returned: always
  type: bool
failures:
  description: "What failed in rounds that were retried, e.g. C([1] create: timed out (may have reached the server))."
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError, tls_argument_spec
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import (
    MlflowError,
    client_from_params,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow_registration import (
    register_model_version,
    remove_model_versions,
)


def register(params, check_mode, transport=None, clock=None, rng=None):
    """Return the module result; raise MlflowError, HttpClientError or ValueError."""
    client = client_from_params(params, transport=transport, clock=clock, rng=rng)
    if params["state"] == "absent":
        return remove_model_versions(client, params["name"], params["idempotency_key"],
                                     experiment_id=params["experiment_id"], check_mode=check_mode)
    done = register_model_version(
        client, params["name"], source=params["source"], artifact=params["artifact"],
        artifact_path=params["artifact_path"], run_id=params["run_id"], description=params["description"],
        idempotency_key=params["idempotency_key"], alias=params["alias"], tags=params["tags"],
        check_mode=check_mode, deadline=params["deadline"], experiment_id=params["experiment_id"])
    return done.to_dict()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **tls_argument_spec(),
            endpoints=dict(type="list", elements="str", required=True),
            name=dict(type="str", required=True),
            source=dict(type="str"),
            artifact=dict(type="path"),
            artifact_path=dict(type="str"),
            run_id=dict(type="str"),
            experiment_id=dict(type="str", default="0"),
            description=dict(type="str"),
            idempotency_key=dict(type="str", no_log=False),
            alias=dict(type="str"),
            tags=dict(type="dict"),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            timeout=dict(type="float", default=10),
            deadline=dict(type="float", default=120),
            max_attempts=dict(type="int", default=5),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        mutually_exclusive=[("source", "artifact")],
        required_if=[("state", "present", ("source", "artifact"), True), ("state", "absent", ("idempotency_key",))],
        required_together=[("username", "password")],
        required_by={"client_key": "client_cert"},
        supports_check_mode=True,
    )
    try:
        result = register(module.params, module.check_mode)
    except MlflowError as err:
        module.fail_json(msg=str(err), **err.facts)
    except HttpClientError as err:
        module.fail_json(msg=str(err), **err.to_dict())
    except ValueError as err:
        module.fail_json(msg=str(err))
    if result.get("duplicates"):
        module.warn("versions %s of model %s carry the idempotency key %s too; version %s is the one returned"
                    % (", ".join(str(v) for v in result["duplicates"]), result["name"], result["idempotency_key"],
                       result["version"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
