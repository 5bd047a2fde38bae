#!/usr/bin/env bash
# ansible-test sanity on the collection. ansible-test wants the collection at
# .../ansible_collections/mlops/mlflow_ha, so the tracked (and untracked, not ignored) files are copied to
# .cache/sanity/ansible_collections/mlops/mlflow_ha first, as a git repository of its own. ansible-test's
# pinned tools (pylint, yamllint, ...) go into a venv of their own (.cache/sanity-venv, made once), kept apart
# from the controller venv; its --venv mode would fetch a pip bootstrap script from outside, which we can't.
source "$(dirname "$0")/lib.sh"

command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck  # ansible-test's shellcheck test
core=$(grep -E '^ansible-core==' "$ROOT/requirements-controller.txt")
svenv="$CACHE/sanity-venv"
stamp="$svenv/.$core"
if [ ! -f "$stamp" ]; then
  t0=$(date +%s)
  rm -rf "$svenv"
  python3 -m venv "$svenv"
  "$svenv/bin/pip" install -q "$core"
  touch "$stamp"
  log "sanity: venv with $core made in $(since "$t0") s"
fi

# The pip version ansible-test seeds its venvs with; our shim stands in for the script it would download.
pipver=$(grep -Eo "pip='[0-9.]+'" "$svenv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py \
  | head -1 | grep -Eo "[0-9.]+")
# ansible-test keeps its per-test venvs under ~/.ansible/test: give it a home inside our cache, so that runs
# from different checkouts never build the same venv at once and nothing is left outside the checkout.
export HOME="$CACHE/sanity-home"
mkdir -p "$HOME/.ansible/test/cache"
cp "$ROOT/tools/get_pip_shim.py" "$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py"

dest="$CACHE/sanity/ansible_collections/mlops/mlflow_ha"
rm -rf "$dest"
mkdir -p "$dest"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ "$dest/")
cd "$dest" || die "cannot enter $dest"
# A repository of its own: otherwise ansible-test asks the enclosing checkout, where .cache is ignored.
git init -q . && git add -A && git -c user.name=sanity -c user.email=sanity@localhost commit -qm sanity
t0=$(date +%s)
"$svenv/bin/ansible-test" sanity --requirements --python "$("$svenv/bin/python" -c \
  'import sys; print("%d.%d" % sys.version_info[:2])')" --color no "$@"
log "sanity: done in $(since "$t0") s"
