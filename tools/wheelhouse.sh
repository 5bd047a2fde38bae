#!/usr/bin/env bash
# Build an offline wheelhouse on the controller: tools/wheelhouse.sh NAME REQUIREMENTS_FILE
# -> $CACHE/wheelhouse/NAME/*.whl, rebuilt only when the requirements file (or this script) changes.
# Roles copy it to a host and `pip install --no-index --find-links` from it: hosts never reach an index
# (air-gapped sites; and here pip inside containers cannot verify the package proxy's TLS). Beside the directory,
# $CACHE/wheelhouse/NAME.tar holds the same files in one archive (sorted, fixed mtimes: rebuilt identically):
# one file to copy and checksum instead of a hundred.
# The controller runs the same Python minor version and glibc as the Debian 12 hosts (3.11), so its wheels fit.
source "$(dirname "$0")/lib.sh"

name=${1:?usage: wheelhouse.sh NAME REQUIREMENTS_FILE}
reqs=${2:?usage: wheelhouse.sh NAME REQUIREMENTS_FILE}
[ -f "$reqs" ] || die "wheelhouse $name: no requirements file at $reqs"

dest="$CACHE/wheelhouse/$name"
# One build per wheelhouse at a time: a second call (the lab and the unit tests' MLflow client side by side in `make
# test`) waits for the first one's result instead of building into the same directory.
mkdir -p "$CACHE/wheelhouse"
exec 8>"$CACHE/wheelhouse/.$name.lock"
flock 8
stamp="$dest/.recipe-$(recipe_hash "$reqs" "$0")"
if [ -f "$stamp" ] && [ -f "$dest.tar" ]; then
  log "wheelhouse $name: current ($(find "$dest" -name '*.whl' | wc -l) wheels)"
  exit 0
fi
t0=$(date +%s)
python=${MLFLOW_HA_WHEEL_PYTHON:-python3}
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
# pip wheel downloads wheels as they are and builds the few sdists into wheels.
"$python" -m pip wheel -q --wheel-dir "$dest.tmp" -r "$reqs"
cp "$reqs" "$dest.tmp/requirements.txt"
touch "$dest.tmp/.recipe-$(recipe_hash "$reqs" "$0")"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dest" -cf "$dest.tar.tmp" .
mv "$dest.tar.tmp" "$dest.tar"
log "wheelhouse $name: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1), in $(since "$t0") s"
