"""docs/deploy.md followed on the lab's containers, where it can be. The lab itself is built through the Docker
engine (`ansible_connection: docker`); a user's machines are reached over SSH as an ordinary user who becomes root
with sudo, with an inventory copied from inventories/example and every secret in an ansible-vault file. This module
walks that path against the converged lab:

- provisioning (the part docs/deploy.md leaves to the user's VM images or cloud-init): an account `deploy` with an
  SSH key and passwordless sudo on every host; sshd comes with the lab's base image as with any Debian VM;
- section 4: `cp -r inventories/example inventories/<site>`, then the edits a user makes: the addresses, the site's
  own settings (here the lab's), the groups it has (no `grafana`: its apt repository is not reachable here);
  `ansible-inventory --graph`;
- section 5: the vault written from vault.yml.example and encrypted with `ansible-vault encrypt`; the PKI directory
  restored from a backup tarball, as a second controller does;
- section 3: `ansible mlflow_ha -m command -a id` as the example's `deploy` user, with and without become, host keys
  checked against a known_hosts file made with ssh-keyscan (the pipeline's SSH_KNOWN_HOSTS);
- section 6: `site.yml` and `validate.yml` with that inventory and the vault password file. The site's settings
  are the lab's, so `site.yml` is a second run over a converged stack: it must change nothing (the rerun test).

The site inventory lives in inventories/<SITE> (and its PKI copy in inventories/pki/<SITE>), where the example's
relative paths resolve; both are removed afterwards and ignored by git."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labctl import INVENTORY, OUTPUT, ROOT, Lab, record, tail

SITE = "lab-deploy"
EXAMPLE = ROOT / "inventories" / "example"
USER = "deploy"
# The groups of the example the lab does not run: Grafana's apt repository is not reachable from the lab.
ABSENT_GROUPS = ("grafana",)
VAULT_REF = re.compile(r"^\{\{\s*(vault_\w+)\s*\}\}$")


def provision(lab: Lab, public_key: str) -> None:
    """What a VM image or cloud-init gives a user: the login account with the controller's key and sudo."""
    script = (
        f"id -u {USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {USER}; "
        f"install -d -m 0700 -o {USER} -g {USER} /home/{USER}/.ssh; "
        f"printf '%s\\n' '{public_key}' > /home/{USER}/.ssh/authorized_keys; "
        f"chown {USER}:{USER} /home/{USER}/.ssh/authorized_keys; chmod 0600 /home/{USER}/.ssh/authorized_keys; "
        f"printf '%s\\n' '{USER} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{USER}; chmod 0440 /etc/sudoers.d/{USER}; "
        "systemctl is-active --quiet ssh || systemctl start ssh")
    for host in lab.hosts:
        lab.exec(host, "sh", "-c", script)


def unprovision(lab: Lab) -> None:
    for host in lab.hosts:
        lab.docker("exec", lab.container(host), "sh", "-c",
                   f"rm -f /etc/sudoers.d/{USER}; userdel --remove {USER} 2>/dev/null || true", check=False)


def known_hosts(lab: Lab, path: Path) -> None:
    """The hosts' keys, collected as the pipeline's SSH_KNOWN_HOSTS is (ssh-keyscan), waiting for sshd to answer."""
    addresses = sorted(lab.hosts.values())
    deadline = time.monotonic() + 60
    while True:
        scan = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", *addresses], capture_output=True,
                              text=True, check=False)
        seen = {line.split()[0] for line in scan.stdout.splitlines() if line and not line.startswith("#")}
        if seen >= set(addresses) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen >= set(addresses), f"sshd does not answer on {sorted(set(addresses) - seen)}: {scan.stderr}"
    path.write_text(scan.stdout)


def vault_refs(example: Any, lab: Any) -> dict[str, Any]:
    """vault_* name -> the lab's value at the place the example's main.yml references it (lists of dicts are matched
    by their `name`). The first place wins: the example shares one identity between the artifact backup and the
    off-site pgBackRest repository, the lab gives each its own (the second stays a plain setting of the site)."""
    found: dict[str, Any] = {}
    for name, value in _refs(example, lab):
        found.setdefault(name, value)
    return found


def _refs(example: Any, lab: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(example, str):
        m = VAULT_REF.match(example.strip())
        if m and lab is not None and not isinstance(lab, (dict, list)):
            yield m.group(1), lab
    elif isinstance(example, dict) and isinstance(lab, dict):
        for key, value in example.items():
            yield from _refs(value, lab.get(key))
    elif isinstance(example, list) and isinstance(lab, list):
        by_name = {item.get("name"): item for item in lab if isinstance(item, dict)}
        for i, item in enumerate(example):
            yield from _refs(item, by_name.get(item.get("name")) if isinstance(item, dict) else
                             (lab[i] if i < len(lab) else None))


def with_refs(value: Any, by_value: dict[str, str]) -> Any:
    """The lab's structure with each secret the vault holds replaced by its vault_* reference."""
    if isinstance(value, dict):
        return {k: with_refs(v, by_value) for k, v in value.items()}
    if isinstance(value, list):
        return [with_refs(v, by_value) for v in value]
    if isinstance(value, str) and value in by_value:
        return "{{ %s }}" % by_value[value]
    return value


def site_settings() -> tuple[dict, dict]:
    """The edits of docs/deploy.md section 4 to the example's group_vars/all/main.yml: every setting the example
    makes is set to this site's (the lab's) value, the example's own site names that the lab leaves at their defaults
    are dropped, and the settings the lab adds come along. Secrets stay in the vault. Returns (main.yml, vault.yml)."""
    example = yaml.safe_load((EXAMPLE / "group_vars" / "all" / "main.yml").read_text())
    lab = yaml.safe_load((INVENTORY / "group_vars" / "all.yml").read_text())
    vault_names = list(yaml.safe_load((EXAMPLE / "group_vars" / "all" / "vault.yml.example").read_text()))
    vault = {name: secrets.token_urlsafe(24) for name in vault_names}
    vault["vault_keepalived_auth_pass"] = secrets.token_urlsafe(6)[:8]
    vault.update(vault_refs(example, lab))
    by_value = {str(v): k for k, v in vault.items() if isinstance(v, str) and len(v) >= 6}
    main: dict[str, Any] = {}
    for key, value in example.items():
        if isinstance(value, str) and VAULT_REF.match(value.strip()):
            main[key] = value
        elif key in lab:
            main[key] = with_refs(lab[key], by_value)
    for key, value in lab.items():
        main.setdefault(key, with_refs(value, by_value))
    return main, vault


def site_hosts(lab: Lab) -> dict:
    """The example's hosts.yml with this site's addresses (the example numbers its hosts as the lab does) and the
    groups it runs; the `mlflow_ha` group's login settings are the example's, untouched."""
    inv = yaml.safe_load((EXAMPLE / "hosts.yml").read_text())
    children = inv["all"]["children"]
    for group in ABSENT_GROUPS:
        children.pop(group, None)
        children["mlflow_ha"]["children"].pop(group, None)
    for name, group in children.items():
        for host, hv in (group.get("hosts") or {}).items():
            if hv and "ansible_host" in hv:
                hv["ansible_host"] = lab.hosts[host]
        if name not in ("mlflow_ha",) and name in lab.groups:
            assert set(group.get("hosts") or {}) == set(lab.groups[name]), \
                f"the example's group {name} holds {sorted(group.get('hosts') or {})}, the lab's {lab.groups[name]}"
    # The lab runs the off-site pgBackRest node on mon1 (the example's comment says: only if you run it).
    children["pgbackrest_offsite"] = {"hosts": {h: None for h in lab.groups.get("pgbackrest_offsite", [])}}
    return inv


class Site:
    """inventories/<SITE> with its vault, PKI directory, SSH key and known_hosts; runs Ansible as the docs say."""

    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab = lab
        self.work = work
        self.inventory = ROOT / "inventories" / SITE
        self.pki = ROOT / "inventories" / "pki" / SITE
        self.key = work / "ssh-key"
        self.known_hosts = work / "known_hosts"
        self.vault_password = work / "vault-password"
        self._env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        if self._env:
            return self._env
        env = dict(os.environ)
        env.update({
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key),
            "ANSIBLE_SSH_COMMON_ARGS": f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes",
            "ANSIBLE_HOST_KEY_CHECKING": "true",
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.timer,ansible.posix.profile_tasks",
            "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "25",
            "PATH": f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}",
        })
        # The lab's settings name the etcd and SeaweedFS binaries the harness built (as tools/lab.sh exports them).
        for var, script in (("MLFLOW_HA_WEED_BINARY", "build-weed.sh"), ("MLFLOW_HA_ETCD_BINARIES", "build-etcd.sh")):
            if not env.get(var):
                out = subprocess.run(["bash", str(ROOT / "tools" / script)], capture_output=True, text=True,
                                     check=True)
                env[var] = out.stdout.strip().splitlines()[-1]
        self._env = env
        return env

    def write(self) -> None:
        self.remove()
        umask = os.umask(0o077)
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{SITE}-controller", "-f",
                            str(self.key)], check=True)
            self.vault_password.write_text(secrets.token_urlsafe(32))
        finally:
            os.umask(umask)
        provision(self.lab, (self.work / "ssh-key.pub").read_text().strip())
        known_hosts(self.lab, self.known_hosts)
        # Section 4: cp -r inventories/example inventories/<site>, then the edits.
        shutil.copytree(EXAMPLE, self.inventory)
        (self.inventory / "hosts.yml").write_text(yaml.safe_dump(site_hosts(self.lab), sort_keys=False))
        main, vault = site_settings()
        (self.inventory / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump(main, sort_keys=False))
        # Section 5: the vault (from vault.yml.example), encrypted; the PKI directory from its backup.
        vault_file = self.inventory / "group_vars" / "all" / "vault.yml"
        vault_file.write_text(yaml.safe_dump(vault, sort_keys=False))
        self.ansible("vault-encrypt", "ansible-vault", "encrypt", "--vault-password-file", str(self.vault_password),
                     str(vault_file))
        assert vault_file.read_text().startswith("$ANSIBLE_VAULT;"), "ansible-vault encrypt left the vault readable"
        backup = self.work / "pki.tar.gz"
        with tarfile.open(backup, "w:gz") as tar:
            tar.add(ROOT / "inventories" / "pki" / "lab", arcname=SITE)
        with tarfile.open(backup) as tar:
            tar.extractall(self.pki.parent, filter="tar")

    def remove(self) -> None:
        shutil.rmtree(self.inventory, ignore_errors=True)
        shutil.rmtree(self.pki, ignore_errors=True)

    def ansible(self, name: str, *argv: str) -> subprocess.CompletedProcess:
        """Run an Ansible command line from the checkout's root; its output goes to tests/output/lab/<name>.log."""
        OUTPUT.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        done = subprocess.run(list(argv), cwd=ROOT, env=self.env(), capture_output=True, text=True, check=False)
        (OUTPUT / f"{name}.log").write_text(done.stdout + done.stderr)
        record(f"  deploy.md: {name}", time.monotonic() - start, done.returncode)
        assert done.returncode == 0, f"{' '.join(argv[:3])} ... failed (tests/output/lab/{name}.log):\n" \
                                     f"{tail(done.stdout + done.stderr)}"
        return done

    def playbook(self, name: str, playbook: str, *extra: str) -> subprocess.CompletedProcess:
        return self.ansible(name, "ansible-playbook", "-i", str(self.inventory), str(ROOT / "playbooks" / playbook),
                            "--vault-password-file", str(self.vault_password), *extra)

    def ad_hoc(self, name: str, *argv: str) -> dict[str, str]:
        """`ansible -i <site> mlflow_ha <argv>` with the one-line output: host -> its stdout."""
        done = self.ansible(name, "ansible", "-i", str(self.inventory), "mlflow_ha", "--vault-password-file",
                            str(self.vault_password), "--one-line", *argv)
        out: dict[str, str] = {}
        for line in done.stdout.splitlines():
            m = re.match(r"^(\S+) \| (\w+)(?: \| rc=\d+)? \| \(stdout\) (.*)$", line)
            if m:
                out[m.group(1)] = m.group(3).strip()
        return out
