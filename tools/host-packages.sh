#!/usr/bin/env bash
# Debian packages the controller needs for the harness and the tests. Installs only what is missing.
source "$(dirname "$0")/lib.sh"

need=()
for pair in make:make rsync:rsync git:git debootstrap:debootstrap shellcheck:shellcheck curl:curl; do
  cmd=${pair%%:*} pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  log "host packages: installing ${need[*]}"
  apt_install "${need[@]}"
else
  log "host packages: all present"
fi
