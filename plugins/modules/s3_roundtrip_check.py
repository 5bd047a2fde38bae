#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: s3_roundtrip_check
short_description: PUT, GET and DELETE an object through the S3 endpoint and compare checksums
version_added: "0.1.0"
description:
  - Writes an object of O(size) random bytes under O(key_prefix) in O(bucket), reads it back and compares its
    SHA-256, then deletes it (unless O(keep)); returns the seconds each step took.
  - With O(verify_key) and O(verify_sha256) it only reads an existing object and compares its checksum, to
    prove that objects written earlier survive a node loss or a restore.
  - Steps are retried with exponential backoff and full jitter on connection errors and 429/5xx answers (each
    step is idempotent); an authorization or not-found answer fails at once.
  - Uses the stack's one S3 contract, the same for SeaweedFS, MinIO or AWS, with path-style addressing unless
    O(addressing_style) says otherwise.
author:
  - mlflow-ha developers (@mlflow-ha)
requirements:
  - boto3 where the module runs
options:
  endpoint_url:
    description: S3 endpoint, e.g. V(https://10.0.0.100:9000) (the load balancer's S3 frontend).
    type: str
    required: true
  access_key:
    description: Access key.
    type: str
    required: true
  secret_key:
    description: Secret key.
    type: str
    required: true
  bucket:
    description: Bucket to write to.
    type: str
    required: true
  region:
    description: Region name for request signing.
    type: str
    default: us-east-1
  addressing_style:
    description:
      - How the bucket goes into requests - V(path) (C(https://endpoint/bucket/key)), V(virtual)
        (C(https://bucket.endpoint/key), as AWS prefers) or V(auto) (botocore's choice).
    type: str
    choices: [path, virtual, auto]
    default: path
  ca_path:
    description: CA bundle to verify an HTTPS endpoint with.
    type: path
  validate_certs:
    description: Verify TLS certificates.
    type: bool
    default: true
  size:
    description: Size of the test object in bytes.
    type: int
    default: 1048576
  key_prefix:
    description: Prefix of the test object's key.
    type: str
    default: mlflow-ha-check/
  keep:
    description: Leave the object in place (its key and checksum are returned, for a later O(verify_key)).
    type: bool
    default: false
  verify_key:
    description: Key of an existing object to read and check instead of a round trip.
    type: str
  verify_sha256:
    description: Expected SHA-256 of O(verify_key).
    type: str
  timeout:
    description: Seconds one request may take.
    type: float
    default: 10
  deadline:
    description: Seconds one step may take, retries included.
    type: float
    default: 60
  max_attempts:
    description: Tries per step at most.
    type: int
    default: 5
attributes:
  check_mode:
    support: none
    description: The check writes an object, so Ansible skips it in check mode.
  diff_mode:
    support: none
    description: No diff; the object is test data.
"""

EXAMPLES = r"""
- name: Upload, download and delete 1 MiB through the S3 frontend
  mlops.mlflow_ha.s3_roundtrip_check:
    endpoint_url: "https://{{ lb_vip }}:9000"
    ca_path: /etc/ssl/certs/mlflow-ha-ca.crt
    access_key: "{{ vault_s3_mlflow_access_key }}"
    secret_key: "{{ vault_s3_mlflow_secret_key }}"
    bucket: mlflow
  register: s3

- name: An object written before a node died is still readable
  mlops.mlflow_ha.s3_roundtrip_check:
    endpoint_url: "https://{{ lb_vip }}:9000"
    access_key: "{{ vault_s3_mlflow_access_key }}"
    secret_key: "{{ vault_s3_mlflow_secret_key }}"
    bucket: mlflow
    verify_key: "{{ earlier.key }}"
    verify_sha256: "{{ earlier.sha256 }}"
"""

RETURN = r"""
key:
  description: Key of the test (or verified) object.
  returned: success
  type: str
sha256:
  description: Its SHA-256.
  returned: success
  type: str
size:
  description: Its size in bytes.
  returned: success
  type: int
put_seconds:
  description: Seconds the PUT took, retries included (round trip only).
  returned: success
  type: float
get_seconds:
  description: Seconds the GET took, retries included.
  returned: success
  type: float
delete_seconds:
  description: Seconds the DELETE took (round trip without O(keep)).
  returned: success
  type: float
attempts:
  description: Tries each step needed.
  returned: success
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import RetryError, RetryPolicy
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.s3 import S3Check

BOTO3_IMPORT_ERROR = None
try:
    import boto3
    from botocore.config import Config
except ImportError:
    boto3 = None
    BOTO3_IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            endpoint_url=dict(type="str", required=True),
            access_key=dict(type="str", required=True, no_log=True),
            secret_key=dict(type="str", required=True, no_log=True),
            bucket=dict(type="str", required=True),
            region=dict(type="str", default="us-east-1"),
            addressing_style=dict(type="str", default="path", choices=["path", "virtual", "auto"]),
            ca_path=dict(type="path"),
            validate_certs=dict(type="bool", default=True),
            size=dict(type="int", default=1048576),
            key_prefix=dict(type="str", default="mlflow-ha-check/", no_log=False),
            keep=dict(type="bool", default=False),
            verify_key=dict(type="str", no_log=False),
            verify_sha256=dict(type="str"),
            timeout=dict(type="float", default=10),
            deadline=dict(type="float", default=60),
            max_attempts=dict(type="int", default=5),
        ),
        required_together=[["verify_key", "verify_sha256"]],
        supports_check_mode=False,
    )
    if boto3 is None:
        module.fail_json(msg=missing_required_lib("boto3"), exception=BOTO3_IMPORT_ERROR)
    p = module.params
    verify = p["ca_path"] if p["validate_certs"] and p["ca_path"] else p["validate_certs"]
    client = boto3.client(
        "s3", endpoint_url=p["endpoint_url"], aws_access_key_id=p["access_key"],
        aws_secret_access_key=p["secret_key"], region_name=p["region"], verify=verify,
        config=Config(s3={"addressing_style": p["addressing_style"]}, connect_timeout=p["timeout"],
                      read_timeout=p["timeout"], retries={"max_attempts": 1, "mode": "standard"},
                      signature_version="s3v4"),
    )
    check = S3Check(client, p["bucket"], p["endpoint_url"],
                    policy=RetryPolicy(max_attempts=p["max_attempts"], deadline=p["deadline"]))
    try:
        if p["verify_key"]:
            result = check.verify(p["verify_key"], p["verify_sha256"])
        else:
            result = check.roundtrip(p["size"], p["key_prefix"], p["keep"])
    except RetryError as err:
        module.fail_json(msg=str(err), attempts=err.attempts)
    except ValueError as err:
        module.fail_json(msg=str(err))
    except Exception as err:  # an answer that is not retried (403, 404, ...): report it as S3 said it
        module.fail_json(msg="S3 at %s: %s: %s" % (p["endpoint_url"], type(err).__name__, err))
    module.exit_json(changed=not p["verify_key"], **result)


if __name__ == "__main__":
    main()
