#!/usr/bin/env bash
# actionlint on the deployment pipeline templates (cloud/pipelines/github/, docs/deploy.md), checked where users put
# them: copied to .github/ of a scratch git repository, so that the local reusable workflow they call
# (./.github/workflows/ansible.yml) and actionlint.yaml (the self-hosted runner labels) are found as in a user's copy.
# `make lint` runs it; actionlint is built once from its Go module (tools/build-actionlint.sh).
source "$(dirname "$0")/lib.sh"

src="$ROOT/cloud/pipelines/github"
[ -d "$src/workflows" ] || die "lint-pipelines: no workflows under $src"
actionlint=$(bash "$ROOT/tools/build-actionlint.sh" | tail -1)
if command -v shellcheck >/dev/null 2>&1; then
  log "lint-pipelines: actionlint checks the run: scripts with $(command -v shellcheck)"
else
  log "lint-pipelines: shellcheck is not on PATH: actionlint skips the run: scripts (Debian package shellcheck)"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/mlflow-ha-pipelines.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$src" "$work/.github"
git -C "$work" init -q
(cd "$work" && "$actionlint" -no-color)
log "lint-pipelines: $(find "$src/workflows" -name '*.yml' | wc -l) workflows clean"
