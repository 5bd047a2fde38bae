#!/usr/bin/env bash
# Controller toolchain: .venv from requirements.txt (reinstalled only when the file changes), and the
# repository linked into .cache/collections as ansible_collections/mlops/mlflow_ha so that Ansible,
# molecule and ansible-test see the collection under its real name.
source "$(dirname "$0")/lib.sh"

VENV="$ROOT/.venv"
stamp="$VENV/.requirements-$(recipe_hash "$ROOT/requirements.txt")"
if [ -f "$stamp" ]; then
  log "venv: $VENV is current"
else
  t0=$(date +%s)
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt"
  rm -f "$VENV"/.requirements-*
  touch "$stamp"
  log "venv: installed requirements.txt in $(since "$t0") s"
fi

link="$CACHE/collections/ansible_collections/mlops/mlflow_ha"
mkdir -p "$(dirname "$link")"
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
  ln -sfn "$ROOT" "$link"
fi

# Mitogen's strategy plugins (ansible.cfg: strategy = mitogen_linear) at a path that does not name the venv's
# Python version.
mitogen="$("$VENV/bin/python" -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')"
if [ "$(readlink "$CACHE/ansible_mitogen" 2>/dev/null)" != "$mitogen" ]; then
  ln -sfn "$mitogen" "$CACHE/ansible_mitogen"
fi
