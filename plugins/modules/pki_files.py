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
    module.exit_json(changed=True, changed_files=["."] + [entry["name"] for entry in module.params["files"]])


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
        },
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
    module.exit_json(changed=bool(changed), changed_files=changed)


if __name__ == "__main__":
    main()
