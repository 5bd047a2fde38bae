#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pki_files
short_description: Install a host's TLS files (CA certificates, certificate, key) in one call
version_added: "0.1.0"
description:
  - Makes O(dir) a directory (owner C(root), group O(group), mode O(dir_mode)) and each of O(files) a file in it
    with the given content, owner O(owner), group O(group) and its mode, in one module run (the pki role's
    C(host_cert) entry point calls it from the action plugin mlops.mlflow_ha.pki_issue, instead of a task per file).
  - A file whose content differs is written to a temporary file in O(dir) and renamed into place, so a reader
    never sees half a key. Owner, group and mode are corrected where they differ.
  - In check mode nothing is written; the result says what would change. A user or group that does not exist yet
    (the calling role creates it in a real run) is no error there; every file would change.
  - Contents are never returned (each C(content) is C(no_log)); RV(changed_files) names the files only.
  - With O(metrics_dir), and only when that directory exists (node_exporter's textfile collector directory on a host
    that runs node_exporter), also writes O(metrics_file) there, the gauge
    C(mlflow_ha_certificate_expiry_timestamp_seconds) with one sample per entry of O(certificates) (labels C(path),
    C(subject), C(issuer), C(serial); the value is the end of validity in Unix seconds), atomically, owner and group
    C(root), mode C(0644). The value changes only when a certificate does, so the file is exact between runs.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  dir:
    description: Directory on the host for the files.
    type: path
    required: true
  dir_mode:
    description: Mode of O(dir).
    type: str
    default: "0750"
  owner:
    description: Owner of the files.
    type: str
    default: root
  group:
    description: Group of the files and of O(dir).
    type: str
    default: root
  files:
    description: The files, each C(name) (a file name in O(dir)), C(content) and C(mode).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: File name in O(dir), without a directory.
        type: str
        required: true
      content:
        description: The file's content.
        type: str
        required: true
      mode:
        description: The file's mode.
        type: str
        default: "0644"
  metrics_dir:
    description:
      - Directory of node_exporter's textfile collector for the expiry metrics of O(certificates). Omitted or
        missing on the host, no metrics file is written (and none is reported as changed).
    type: path
  metrics_file:
    description: File name in O(metrics_dir), ending in C(.prom); required with O(metrics_dir).
    type: str
  certificates:
    description:
      - The certificates whose expiry O(metrics_file) exports, read by the caller (the action plugin
        mlops.mlflow_ha.pki_issue reads them on the controller, so the host needs no C(cryptography)).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Where the host holds the certificate (label C(path)).
        type: str
        required: true
      subject:
        description: Common name of its subject (label C(subject)).
        type: str
        required: true
      issuer:
        description: Common name of its issuer (label C(issuer)).
        type: str
        required: true
      serial:
        description: Serial number in hex (label C(serial)).
        type: str
        required: true
      not_after:
        description: End of validity in Unix seconds (the sample's value).
        type: int
        required: true
"""

EXAMPLES = r"""
- name: Install the TLS files (what the action plugin mlops.mlflow_ha.pki_issue sends)
  mlops.mlflow_ha.pki_files:
    dir: /etc/etcd/tls
    group: etcd
    files:
      - {name: ca.crt, content: "{{ lookup('ansible.builtin.file', 'ca.crt') }}", mode: "0644"}
"""

RETURN = r"""
changed_files:
  description: Names of the files (and C(.) for the directory) that were or in check mode would be changed.
  returned: always
  type: list
  elements: str
  sample: [etcd.crt, etcd.key]
metrics_changed:
  description: Whether O(metrics_file) was or in check mode would be written.
  returned: always
  type: bool
metrics_path:
  description: The metrics file, empty when none is kept (no O(metrics_dir), or it does not exist on the host).
  returned: always
  type: str
  sample: /var/lib/prometheus/node-exporter/mlflow_ha_cert_etc_etcd_tls_etcd.prom
"""

import grp
import os
import pwd
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _ids(module, owner, group):
    """The user's and group's ids. A missing one fails the task, except in check mode, where the role that would
    create it in a real run (the service's user and group) has not run either: then every file would change."""
    ids = []
    for kind, name, lookup in (("user", owner, lambda n: pwd.getpwnam(n).pw_uid),
                               ("group", group, lambda n: grp.getgrnam(n).gr_gid)):
        try:
            ids.append(lookup(name))
        except KeyError:
            if module.check_mode:
                _all_would_change(module)
            module.fail_json(msg=f"pki_files: no {kind} {name} on this host (of the files in {module.params['dir']})")
    return tuple(ids)


def _all_would_change(module):
    module.exit_json(changed=True, changed_files=["."] + [entry["name"] for entry in module.params["files"]],
                     metrics_changed=False, metrics_path="")


METRIC = "mlflow_ha_certificate_expiry_timestamp_seconds"


def _label(value):
    """A label value in the text exposition format: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(certificates):
    """The textfile collector's file: the expiry gauge, one sample per certificate, in the order given."""
    lines = [f"# HELP {METRIC} End of validity (notAfter) of a certificate the collection installed, Unix seconds.",
             f"# TYPE {METRIC} gauge"]
    for cert in certificates:
        labels = ",".join(f'{key}="{_label(cert[key])}"' for key in ("path", "subject", "issuer", "serial"))
        lines.append(f"{METRIC}{{{labels}}} {int(cert['not_after'])}")
    return "\n".join(lines) + "\n"


def _metrics(module):
    """(changed, path) of the metrics file; nothing without metrics_dir or when it does not exist on the host."""
    params = module.params
    directory = params["metrics_dir"]
    if not directory:
        return False, ""
    name = params["metrics_file"] or ""
    if not name.endswith(".prom") or os.sep in name or name.startswith("."):
        module.fail_json(msg=f"pki_files: metrics_file {name!r} must be a file name ending in .prom")
    if not os.path.isdir(directory):
        return False, ""
    path = os.path.join(directory, name)
    content_differs, attrs_differ = _needs(path, metrics_text(params["certificates"]).encode(), 0, 0, 0o644)
    if module.check_mode or not (content_differs or attrs_differ):
        return content_differs or attrs_differ, path
    if content_differs:
        _write(directory, name, metrics_text(params["certificates"]).encode(), 0, 0, 0o644)
    else:
        os.chown(path, 0, 0)
        os.chmod(path, 0o644)
    return True, path


def _mode(module, text):
    try:
        return int(str(text), 8)
    except ValueError:
        module.fail_json(msg=f"pki_files: mode {text!r} is not an octal number such as 0640")


def _needs(path, data, uid, gid, mode):
    """(content differs, attributes differ) of the file at path."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True, True
    if not stat.S_ISREG(st.st_mode):
        return True, True
    with open(path, "rb") as handle:
        same = handle.read() == data
    return not same, (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (uid, gid, mode)


def _write(directory, name, data, uid, gid, mode):
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main():
    module = AnsibleModule(
        argument_spec={
            "dir": {"type": "path", "required": True},
            "dir_mode": {"type": "str", "default": "0750"},
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
            "files": {"type": "list", "elements": "dict", "required": True, "options": {
                "name": {"type": "str", "required": True},
                "content": {"type": "str", "required": True, "no_log": True},
                "mode": {"type": "str", "default": "0644"},
            }},
            "metrics_dir": {"type": "path"},
            "metrics_file": {"type": "str"},
            "certificates": {"type": "list", "elements": "dict", "default": [], "options": {
                "path": {"type": "str", "required": True},
                "subject": {"type": "str", "required": True},
                "issuer": {"type": "str", "required": True},
                "serial": {"type": "str", "required": True},
                "not_after": {"type": "int", "required": True},
            }},
        },
        required_by={"metrics_dir": "metrics_file"},
        supports_check_mode=True,
    )
    params = module.params
    directory = params["dir"]
    uid, gid = _ids(module, params["owner"], params["group"])
    dir_mode = _mode(module, params["dir_mode"])
    changed = []
    try:
        st = os.stat(directory)
        if not stat.S_ISDIR(st.st_mode):
            module.fail_json(msg=f"pki_files: {directory} exists and is not a directory")
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (0, gid, dir_mode):
            changed.append(".")
            if not module.check_mode:
                os.chown(directory, 0, gid)
                os.chmod(directory, dir_mode)
    except FileNotFoundError:
        changed.append(".")
        if not module.check_mode:
            os.makedirs(directory, exist_ok=True)
            os.chown(directory, 0, gid)
            os.chmod(directory, dir_mode)
    for entry in params["files"]:
        name = entry["name"]
        if not name or os.sep in name or name in (".", ".."):
            module.fail_json(msg=f"pki_files: {name!r} is not a file name (files are named without a directory)")
        mode = _mode(module, entry["mode"])
        data = entry["content"].encode()
        path = os.path.join(directory, name)
        if "." in changed and not os.path.isdir(directory):  # check mode, no directory yet: everything is new
            changed.append(name)
            continue
        content_differs, attrs_differ = _needs(path, data, uid, gid, mode)
        if content_differs or attrs_differ:
            changed.append(name)
        if module.check_mode:
            continue
        if content_differs:
            _write(directory, name, data, uid, gid, mode)
        elif attrs_differ:
            os.chown(path, uid, gid)
            os.chmod(path, mode)
    metrics_changed, metrics_path = _metrics(module)
    module.exit_json(changed=bool(changed) or metrics_changed, changed_files=changed, metrics_changed=metrics_changed,
                     metrics_path=metrics_path)


if __name__ == "__main__":
    main()
