"""docs/deploy.md, the controller install and the pipeline templates, checked without Docker or hosts: every file,
playbook and make target the doc's commands name exists, the example inventory has every group site.yml needs and
logs in and becomes root on the stack's hosts only, the playbooks the doc and the workflows name pass
--syntax-check, the vault variables it lists are the example inventory's, tools/controller.sh checks its
prerequisites. `make deploy-check`; MLFLOW_HA_DEPLOY_VENV=1 also builds a controller virtualenv (~35 s, pip)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
EXAMPLE = ROOT / "inventories" / "example"
WORKFLOWS = ROOT / "cloud" / "pipelines" / "github" / "workflows"
BIN = Path(sys.executable).parent
# Inventories the doc tells users to create (the pipeline's environments).
USER_INVENTORIES = ("inventories/staging", "inventories/production")
# Groups a site needs hosts in: site.yml's own check (etcd, postgres, storage, lb, mlflow), the monitoring play, and
# the artifact backup host it asks for unless mlflow_ha_artifact_backup is false.
SITE_GROUPS = ("etcd", "postgres", "storage", "lb", "mlflow", "monitoring", "artifact_backup")
TEST_TOOLS = ("ansible-lint", "molecule", "pytest", "ruff", "docker")

PATH_RE = re.compile(
    r"(?<![\w/.-])((?:playbooks|tools|tests|inventories|cloud|roles|docs)/[\w./<>{}-]+|requirements[\w-]*\.txt)")
FQCN_RE = re.compile(r"\bmlops\.mlflow_ha\.([a-z_]+(?:\.[a-z_]+)?)\b")
MAKE_RE = re.compile(r"\bmake ([a-z][\w-]*(?: [a-z][\w-]*)*)")


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)


def inline_code(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


DOC_TEXT = DOC.read_text()
COMMANDS = code_blocks(DOC_TEXT)
SNIPPETS = COMMANDS + inline_code(re.sub(r"```.*?```", "", DOC_TEXT, flags=re.S))


def named_paths() -> list[str]:
    """Repository paths the doc names in its commands and inline code, without placeholders (<site>) and without
    what runs create (inventories/pki)."""
    found = set()
    for snippet in SNIPPETS:
        for match in PATH_RE.findall(snippet):
            path = match.rstrip(".,:;")
            if "<" in path or "{" in path or path.startswith(("inventories/pki", *USER_INVENTORIES)):
                continue
            found.add(path)
    return sorted(found)


def named_playbooks() -> list[str]:
    """Playbooks the doc's commands and inline code run, by path or by FQCN (mlops.mlflow_ha.dr.switchover)."""
    found = {p for p in named_paths() if p.startswith("playbooks/") and p.endswith(".yml")}
    for snippet in SNIPPETS:
        for name in FQCN_RE.findall(snippet):
            candidate = "playbooks/" + name.replace(".", "/") + ".yml"
            if (ROOT / candidate).is_file() or "." in name:
                found.add(candidate)
    return sorted(found)


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


def workflow_playbooks() -> list[str]:
    """Every playbook the pipeline templates run (the `playbooks:` input of their calls of ansible.yml)."""
    found = set()
    for path in WORKFLOWS.glob("*.yml"):
        for job in (yaml.safe_load(path.read_text()).get("jobs") or {}).values():
            for raw in str((job.get("with") or {}).get("playbooks", "")).splitlines():
                line = raw.strip()
                if line and not line.startswith("#"):
                    found.add(line.split()[0])
    return sorted(found)


def ansible_env(tmp_path: Path) -> dict[str, str]:
    """This checkout as the collection mlops.mlflow_ha (not whatever .cache/collections links to); its dependencies
    from .cache/collections (tools/link_dependencies.py: ansible.cfg scans no other path)."""
    link = tmp_path / "collections" / "ansible_collections" / "mlops" / "mlflow_ha"
    link.parent.mkdir(parents=True)
    link.symlink_to(ROOT)
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                ANSIBLE_COLLECTIONS_PATH=f"{tmp_path / 'collections'}:{ROOT / '.cache' / 'collections'}",
                ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")


@pytest.mark.parametrize("path", named_paths())
def test_every_path_the_doc_names_exists(path):
    assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which is not in the repository"


def test_the_doc_names_the_playbooks_users_run():
    assert {"playbooks/site.yml", "playbooks/validate.yml"} <= set(named_playbooks())


def test_every_make_target_the_doc_names_exists():
    targets = make_targets()
    named = {word for snippet in SNIPPETS for group in MAKE_RE.findall(snippet) for word in group.split()
             if not word.startswith("-")}
    named -= {"the", "a"}  # prose after `make` in a sentence
    assert named, "the doc names no make target"
    assert named <= targets, f"docs/deploy.md names make targets the Makefile lacks: {sorted(named - targets)}"


def test_the_vault_variables_listed_are_the_example_inventorys():
    used = set(re.findall(r"\bvault_[a-z0-9_]+", (EXAMPLE / "group_vars" / "all" / "main.yml").read_text()))
    example_file = EXAMPLE / "group_vars" / "all" / "vault.yml.example"
    example = set(re.findall(r"^(vault_[a-z0-9_]+):", example_file.read_text(), flags=re.M))
    listed = set(re.findall(r"`(vault_[a-z0-9_]+)`", DOC_TEXT))
    assert used == example, "group_vars/all/main.yml and vault.yml.example differ in their vault_* variables"
    assert listed == example, (f"docs/deploy.md misses {sorted(example - listed)}, "
                               f"lists unknown {sorted(listed - example)}")


@pytest.fixture(scope="module")
def example_inventory() -> dict:
    proc = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(EXAMPLE), "--list"], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def hosts_of(inventory: dict, group: str) -> set[str]:
    entry = inventory.get(group) or {}
    hosts = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts |= hosts_of(inventory, child)
    return hosts


def test_the_example_inventory_has_every_group_site_yml_needs(example_inventory):
    empty = [group for group in SITE_GROUPS if not hosts_of(example_inventory, group)]
    assert not empty, f"inventories/example has no hosts in {empty}"
    site_groups = set(re.findall(r"^\s+hosts: ([a-z_]+)$", (ROOT / "playbooks" / "site.yml").read_text(), flags=re.M))
    # pgbackrest_offsite: the lab's stand-in for an off-site S3 (the example backs up to AWS S3 instead).
    lacking = site_groups - {"all", "pgbackrest_offsite"} - set(example_inventory)
    assert not lacking, f"site.yml plays on groups the example lacks: {sorted(lacking)}"


def test_the_example_inventory_becomes_root_on_the_stack_only(example_inventory):
    stack = hosts_of(example_inventory, "mlflow_ha")
    every = hosts_of(example_inventory, "all")
    assert stack == every, f"hosts outside the group mlflow_ha get no ansible_user/become: {sorted(every - stack)}"
    hostvars = example_inventory["_meta"]["hostvars"]
    for host in sorted(every):
        assert hostvars[host].get("ansible_become") is True, host
        assert hostvars[host].get("ansible_user"), host
    # group_vars/all reaches the implicit localhost too: the controller's own tasks would try sudo.
    site_vars = yaml.safe_load((EXAMPLE / "group_vars" / "all" / "main.yml").read_text())
    assert not {"ansible_become", "ansible_user"} & set(site_vars)


def test_the_playbooks_the_doc_and_the_pipeline_run_pass_syntax_check(tmp_path):
    playbooks = sorted(set(named_playbooks()) | set(workflow_playbooks()))
    missing = [p for p in playbooks if not (ROOT / p).is_file()]
    assert not missing, f"named but missing: {missing}"
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", str(EXAMPLE), *playbooks], cwd=ROOT,
                          env=ansible_env(tmp_path), text=True, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_the_pipeline_runs_site_and_validate_and_a_restore_drill():
    names = set(workflow_playbooks())
    assert {"playbooks/site.yml", "playbooks/validate.yml", "playbooks/dr/restore_pgbackrest.yml"} <= names


def test_the_controller_requirements_hold_no_test_tools():
    controller = (ROOT / "requirements-controller.txt").read_text()
    pins = {line.split("==")[0].split("[")[0].strip() for line in controller.splitlines()
            if line.strip() and not line.startswith("#")}
    assert {"ansible", "ansible-core", "psycopg2-binary", "boto3", "bcrypt"} <= pins
    assert not pins & set(TEST_TOOLS), f"test tools in requirements-controller.txt: {sorted(pins & set(TEST_TOOLS))}"
    assert "-r requirements-controller.txt" in (ROOT / "requirements.txt").read_text().splitlines()


def controller(*args: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "tools" / "controller.sh"), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, check=False, env=env)


def test_controller_check_changes_nothing_and_needs_no_docker(tmp_path):
    env = dict(os.environ, MLFLOW_HA_CACHE=str(tmp_path / "cache"))
    proc = controller("--check", "--venv", str(tmp_path / "venv"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "prerequisites present" in proc.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "cache").exists()
    code = [line for line in (ROOT / "tools" / "controller.sh").read_text().splitlines()
            if not line.lstrip().startswith("#")]
    for word in ("docker", "build-image", "host-packages", "apt_install"):
        assert not [line for line in code if word in line.lower()], f"tools/controller.sh uses {word}"


def test_controller_refuses_wheels_for_another_python(tmp_path):
    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\necho 3.12\n")
    fake.chmod(0o755)
    proc = controller("--check", env=dict(os.environ, MLFLOW_HA_WHEEL_PYTHON=str(fake)))
    assert proc.returncode != 0
    assert "the wheelhouses need Python 3.11" in " ".join(proc.stderr.split())


def test_controller_rejects_contradicting_options():
    proc = controller("--no-wheelhouses", "--wheelhouses-only")
    assert proc.returncode != 0
    assert "leave nothing to do" in proc.stderr


@pytest.mark.skipif(os.environ.get("MLFLOW_HA_DEPLOY_VENV") != "1", reason="set MLFLOW_HA_DEPLOY_VENV=1 (pip, ~35 s)")
def test_controller_builds_a_working_venv(tmp_path):
    env = dict(os.environ, MLFLOW_HA_CACHE=str(tmp_path / "cache"))
    env.pop("VIRTUAL_ENV", None)
    proc = controller("--venv", str(tmp_path / "venv"), "--no-wheelhouses", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    python = tmp_path / "venv" / "bin" / "python"
    imports = "import ansible, ansible_mitogen, psycopg2, boto3, bcrypt, cryptography, yaml"
    check = subprocess.run([str(python), "-c", imports], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert (tmp_path / "cache" / "collections" / "ansible_collections" / "mlops" / "mlflow_ha").resolve() == ROOT
    for tool in TEST_TOOLS:
        assert not (tmp_path / "venv" / "bin" / tool).exists(), f"{tool} in the controller venv"
