#!/usr/bin/env bash
# Debian packages the controller needs for the harness and the tests (openssh-client: tests/lab/deploy_path.py logs in
# to the lab over SSH as docs/deploy.md does). Installs only what is missing.
source "$(dirname "$0")/lib.sh"

need=()
for pair in make:make rsync:rsync git:git debootstrap:debootstrap shellcheck:shellcheck curl:curl \
            ssh-keyscan:openssh-client; do
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
