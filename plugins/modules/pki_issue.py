#!/usr/bin/python
# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

# The documentation of the action plugin plugins/action/pki_issue.py, which does all the work on the controller.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pki_issue
short_description: Issue a host key and certificate from the collection CA, on the controller
version_added: "0.1.0"
description:
  - Makes C(<store_dir>/<name>.key) and C(<store_dir>/<name>.crt), a key and a certificate signed by the CA in
    O(ca_dir), exist and be up to date, in the controller's process (an action plugin; no module runs for it).
    With O(dest_dir), installs them on the host together with the CA certificate (the pki role's C(host_cert)
    entry point does).
  - The key (mode C(0600), unencrypted PEM) is kept when it is of O(key_type) (and O(key_curve) or O(key_size));
    otherwise, or when it is missing or unreadable, a new one is made, and with it a new certificate.
  - The certificate (mode C(0644)) is issued again only when it is missing, is not signed by the CA in O(ca_dir)
    (issuer name and signature checked with C(ca.crt)'s public key), does not hold the key's public key, has another
    subject (C(CN=)O(common_name) only), another set of O(subject_alt_names) or O(extended_key_usages), or ends
    within O(renew_before_days). Certificates that community.crypto's C(openssl_privatekey), C(openssl_csr_pipe)
    and C(x509_certificate) (provider C(ownca)) made with the same names are taken as up to date.
  - A new certificate carries the subject alternative names, key usage C(digitalSignature) with C(keyAgreement)
    (EC keys) or C(keyEncipherment) (RSA keys), the extended key usages, subject and authority key identifiers, a
    random serial number, and is valid from the moment of issue for O(valid_days) days (SHA-256 signature).
  - The controller's store is written in check mode too, like the CA itself, so that a check run can show the real
    changes on the hosts. Every file is written to a temporary file of its own and renamed into place, so parallel
    runs for several hosts (each with its own O(store_dir)) never share a name, and readers never see half a file.
  - Neither key material nor the passphrase is ever returned.
author:
  - mlflow-ha developers (@mlflow-ha)
options:
  ca_dir:
    description:
      - Directory on the controller holding the CA certificate C(ca.crt) and its key C(ca.key) (PEM, encrypted with
        O(ca_passphrase)); the pki role's C(pki_ca_dir).
      - Without C(ca.crt) the task fails and says to apply the pki role first. C(ca.key) is read only to sign.
    type: path
    required: true
  ca_passphrase:
    description: Passphrase of C(ca.key); empty for an unencrypted key.
    type: str
    default: ""
  store_dir:
    description: Directory on the controller for the key and certificate; created with mode C(0700) when missing.
    type: path
    required: true
  name:
    description: File name stem of the key and certificate (V(etcd) gives C(etcd.key) and C(etcd.crt)).
    type: str
    required: true
  common_name:
    description: Common name, the whole subject of the certificate (the inventory name in the pki role).
    type: str
    required: true
  subject_alt_names:
    description:
      - Subject alternative names, each C(DNS:<name>), C(IP:<address>), C(email:<address>) or C(URI:<uri>).
      - An empty list gives C(DNS:)O(common_name), as community.crypto's C(openssl_csr_pipe) did.
    type: list
    elements: str
    required: true
  extended_key_usages:
    description:
      - Extended key usages, by short or long name (V(serverAuth) or V(TLS Web Server Authentication),
        V(clientAuth), V(codeSigning), V(emailProtection), V(timeStamping), V(OCSPSigning)) or dotted OID.
    type: list
    elements: str
    default: [serverAuth, clientAuth]
  key_type:
    description: Type of the key.
    type: str
    choices: [ECC, RSA]
    default: ECC
  key_curve:
    description: Curve of an V(ECC) key.
    type: str
    choices: [secp256r1, secp384r1, secp521r1, secp224r1, secp256k1, brainpoolP256r1, brainpoolP384r1,
              brainpoolP512r1]
    default: secp384r1
  key_size:
    description: Bits of an V(RSA) key (community.crypto's default); at least 2048.
    type: int
    default: 4096
  valid_days:
    description: Lifetime of a new certificate in days.
    type: int
    default: 825
  renew_before_days:
    description: Issue the certificate again when it ends within this many days; less than O(valid_days).
    type: int
    default: 30
  passphrase_min_length:
    description: Fail, before anything is read or written, when O(ca_passphrase) is shorter (the pki role asks 12).
    type: int
    default: 0
  dest_dir:
    description:
      - Directory on the managed host to install C(ca.crt), C(<name>.crt) and C(<name>.key) (mode C(0640)) in, with
        one run of the module mlops.mlflow_ha.pki_files (the directory C(root)-owned, O(group), C(0750)). Then
        C(changed) is whether the host's files changed (the metrics file of O(metrics_dir) included), and the fact
        C(pki_host_cert_changed) whether the TLS files did.
      - Omitted, nothing reaches the host.
    type: path
  owner:
    description: Owner of the installed files.
    type: str
    default: root
  group:
    description: Group of the installed files and of O(dest_dir).
    type: str
    default: root
  ca_bundle:
    description:
      - CA certificate files on the controller whose contents, one after the other, are installed as C(ca.crt).
        Omitted, C(ca.crt) of O(ca_dir) alone (byte for byte).
    type: list
    elements: path
  extra_files:
    description:
      - Further files for O(dest_dir), installed in the same module run with the same owner and group (the pki
        role's C(web_config) entry point sends the web configuration this way); they count for C(changed) and the
        fact C(pki_host_cert_changed). Their contents are never logged or returned.
      - Ignored without O(dest_dir).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: A file name in O(dest_dir).
        type: str
        required: true
      content:
        description: The file's content.
        type: str
        required: true
      mode:
        description: The file's mode.
        type: str
        default: "0640"
  metrics_dir:
    description:
      - Directory of node_exporter's textfile collector on the host (the pki role's C(pki_cert_metrics_dir)). With
        O(dest_dir), and only when this directory exists on the host, the same module run writes
        C(mlflow_ha_cert_<dest_dir and name, sanitized>.prom) there, the gauge
        C(mlflow_ha_certificate_expiry_timestamp_seconds) with labels C(path), C(subject), C(issuer) (common names)
        and C(serial), valued at the end of validity in Unix seconds, for the certificate and each CA certificate of
        the installed C(ca.crt). The dates are read here on the controller; the host needs no C(cryptography).
      - The metrics file counts for C(changed), not for the fact C(pki_host_cert_changed). Omitted, no metrics.
    type: path
extends_documentation_fragment:
  - action_common_attributes
  - action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: The controller's store is written in check mode as well; the host's files only report what would change.
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - module: community.crypto.x509_certificate
"""

EXAMPLES = r"""
- name: Issue it and install it with the CA certificate on the host (sets the fact pki_host_cert_changed)
  mlops.mlflow_ha.pki_issue:
    ca_dir: "{{ pki_ca_dir }}"
    ca_passphrase: "{{ pki_ca_passphrase }}"
    store_dir: "{{ pki_ca_dir }}/hosts/{{ inventory_hostname }}"
    name: etcd
    common_name: "{{ inventory_hostname }}"
    subject_alt_names: ["DNS:{{ inventory_hostname }}", "IP:10.10.0.11"]
    dest_dir: /etc/etcd/tls
    group: etcd
  register: issued  # issued.cert_path, issued.key_path: the files in the controller's store
"""

RETURN = r"""
key_path:
  description: The key on the controller.
  returned: success
  type: str
  sample: /srv/inventories/pki/prod/hosts/pg1/etcd.key
cert_path:
  description: The certificate on the controller.
  returned: success
  type: str
  sample: /srv/inventories/pki/prod/hosts/pg1/etcd.crt
changed_files:
  description: With O(dest_dir), the installed files (C(.) for the directory) that changed or would change.
  returned: when O(dest_dir) is set
  type: list
  elements: str
  sample: [etcd.crt]
store_changed:
  description: With O(dest_dir), whether the controller's store was written (C(changed) is about the host then).
  returned: when O(dest_dir) is set
  type: bool
metrics_changed:
  description: With O(dest_dir), whether the expiry metrics file was or in check mode would be written.
  returned: when O(dest_dir) is set
  type: bool
metrics_path:
  description: With O(dest_dir), the metrics file on the host; empty when none is kept.
  returned: when O(dest_dir) is set
  type: str
  sample: /var/lib/prometheus/node-exporter/mlflow_ha_cert_etc_etcd_tls_etcd.prom
ca_cert_path:
  description: The CA certificate on the controller.
  returned: success
  type: str
  sample: /srv/inventories/pki/prod/ca.crt
key_changed:
  description: Whether a new key was made.
  returned: success
  type: bool
cert_changed:
  description: Whether the certificate was issued.
  returned: success
  type: bool
reasons:
  description: Why the certificate was issued; empty when it was up to date.
  returned: success
  type: list
  elements: str
  sample: ["the subject alternative names differ"]
"""
