# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: bcrypt_hash
short_description: A bcrypt hash of a password for a web configuration file, the same on every run
version_added: "0.1.0"
description:
  - The C($2b$) bcrypt hash the Prometheus exporter toolkit's C(basic_auth_users) (C(--web.config.file)) and the
    collection's own exporters check logins against.
  - The salt is derived from O(salt_seed) (a host and user name, never the password, since a salt anyone can read
    must not be a quick hash of the password), so the same password gives the same hash on every run and a role
    that writes it changes nothing the second time; another host or user gets another salt.
  - Hashes with the C(bcrypt) Python package when the controller has it, else with the C library's crypt(3)
    through Python's C(crypt) module (Python < 3.13; glibc's libxcrypt knows bcrypt).
  - Passwords longer than 72 bytes are refused (bcrypt ignores what follows).
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  _input:
    description: The password.
    type: str
    required: true
  salt_seed:
    description: What the salt is derived from, e.g. C(<inventory_hostname>/<user>).
    type: str
    required: true
  rounds:
    description: The bcrypt cost (log2 of the rounds).
    type: int
    default: 10
"""

EXAMPLES = r"""
basic_auth_users:
  monitoring: "{{ password | mlops.mlflow_ha.bcrypt_hash(inventory_hostname ~ '/monitoring') }}"
# -> $2b$10$<22 characters of salt><31 characters of hash>
"""

RETURN = r"""
_value:
  description: The bcrypt hash.
  type: str
"""

import base64
import hashlib
import hmac
import warnings

from ansible.errors import AnsibleFilterError

_STANDARD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BCRYPT = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def bcrypt_salt(seed):
    """The 22-character bcrypt salt (16 bytes in bcrypt's base64) derived from ``seed``."""
    raw = hmac.new(b"mlflow-ha bcrypt salt", str(seed).encode("utf-8"), hashlib.sha256).digest()[:16]
    text = base64.b64encode(raw).decode("ascii").rstrip("=")
    return text.translate(str.maketrans(_STANDARD, _BCRYPT))


def _hash(password, setting):
    try:
        import bcrypt  # noqa: PLC0415 - optional: crypt(3) below does the same
    except ImportError:
        bcrypt = None
    if bcrypt is not None:
        return bcrypt.hashpw(password, setting.encode("ascii")).decode("ascii")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # noqa: PLC0415 - Python < 3.13 only
    except ImportError:
        raise AnsibleFilterError("bcrypt_hash: install the bcrypt Python package on the controller "
                                 "(pip install bcrypt); this Python has no crypt module to fall back on") from None
    result = crypt.crypt(password.decode("utf-8"), setting)
    if not result or not result.startswith(setting[:7]):
        raise AnsibleFilterError("bcrypt_hash: this C library's crypt(3) does not know bcrypt: install the bcrypt "
                                 "Python package on the controller (pip install bcrypt)")
    return result


def bcrypt_hash(password, salt_seed, rounds=10):
    data = str(password).encode("utf-8")
    if not data:
        raise AnsibleFilterError("bcrypt_hash: the password is empty")
    if len(data) > 72:
        raise AnsibleFilterError("bcrypt_hash: the password is longer than 72 bytes, which bcrypt ignores")
    rounds = int(rounds)
    if not 4 <= rounds <= 31:
        raise AnsibleFilterError("bcrypt_hash: rounds must be 4 to 31, got %d" % rounds)
    return _hash(data, "$2b$%02d$%s" % (rounds, bcrypt_salt(salt_seed)))


class FilterModule:
    def filters(self):
        return {"bcrypt_hash": bcrypt_hash}
