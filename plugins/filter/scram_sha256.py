# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: scram_sha256
short_description: A PostgreSQL SCRAM-SHA-256 secret of a password, the same on every run
version_added: "0.1.0"
description:
  - The form PostgreSQL keeps in C(pg_authid.rolpassword) and PgBouncer reads from its auth file,
    C(SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>) (RFC 5802, RFC 7677).
  - The salt is derived from the user name (SHA-256), never from the password; a salt is public (in
    C(pg_authid) and the auth file), and one computed from the password would let anyone who reads it test
    password guesses at the speed of one hash, skipping PBKDF2's iterations. So the same user and password give
    the same secret on every run (a role that sets it, PostgreSQL's user or PgBouncer's auth file, changes
    nothing the second time), and PostgreSQL and PgBouncer hold byte-identical secrets, which PgBouncer needs to
    log in to PostgreSQL on a client's behalf without the plain password.
  - The price of a salt that does not change is that the same user and password give the same secret on every site that
    uses this filter (give each site's users their own passwords, as the vault does).
  - A value that already is a SCRAM secret is returned as it is.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  _input:
    description: The password.
    type: str
    required: true
  username:
    description: The user's name (the salt is derived from it).
    type: str
    required: true
  iterations:
    description: PBKDF2 iterations (PostgreSQL's default).
    type: int
    default: 4096
"""

EXAMPLES = r"""
password: "{{ item.password | mlops.mlflow_ha.scram_sha256(item.name) }}"
# -> SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>
"""

RETURN = r"""
_value:
  description: The SCRAM-SHA-256 secret.
  type: str
"""

import base64
import hashlib
import hmac

PREFIX = "SCRAM-SHA-256$"


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def scram_secret(password, salt, iterations=4096):
    """The secret of ``password`` with ``salt`` (bytes) and ``iterations``, as PostgreSQL writes it."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return "%s%d:%s$%s:%s" % (PREFIX, iterations, _b64(salt), _b64(stored_key), _b64(server_key))


def scram_sha256(password, username, iterations=4096):
    password = str(password)
    if password.startswith(PREFIX):
        return password
    salt = hashlib.sha256(b"mlflow-ha scram salt:" + str(username).encode("utf-8")).digest()[:16]
    return scram_secret(password, salt, int(iterations))


class FilterModule:
    def filters(self):
        return {"scram_sha256": scram_sha256}
