#!/usr/bin/env bash
# Development toolchain: .venv from requirements.txt (which includes requirements-controller.txt; reinstalled only
# when either file changes), and the paths ansible.cfg names (the collection and Mitogen's plugins, lib.sh; the
# collection's dependencies beside it, tools/link_dependencies.py).
# A controller that only deploys needs less: tools/controller.sh (make controller).
source "$(dirname "$0")/lib.sh"

VENV="$ROOT/.venv"
venv_install "$VENV" "$ROOT/requirements.txt" "$ROOT/requirements-controller.txt"
link_collection "$VENV"
"$VENV/bin/python" "$ROOT/tools/link_dependencies.py" "$CACHE/collections"
