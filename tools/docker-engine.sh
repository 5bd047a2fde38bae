#!/usr/bin/env bash
# Make sure a Docker engine answers. Installs Debian's docker.io when dockerd is missing and starts it
# (no systemd on the controller is assumed). Idempotent: returns at once when `docker info` works.
source "$(dirname "$0")/lib.sh"

if docker info >/dev/null 2>&1; then
  log "docker engine: already running"
  exit 0
fi
t0=$(date +%s)
if ! command -v dockerd >/dev/null 2>&1; then
  log "docker engine: installing Debian's docker.io"
  apt_install docker.io
fi
if command -v systemctl >/dev/null 2>&1 && [ "$(ps -p 1 -o comm=)" = systemd ]; then
  systemctl start docker
else
  log "docker engine: starting dockerd (log: /var/log/dockerd.log)"
  # In a session of its own: a Ctrl-C of `make test` (or a killed CI job) must not take the engine and the lab with it.
  setsid nohup dockerd >/var/log/dockerd.log 2>&1 &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && { log "docker engine: up after $(since "$t0") s"; exit 0; }
  sleep 1
done
tail -20 /var/log/dockerd.log >&2 || true
die "dockerd did not answer within 60 s; see /var/log/dockerd.log above"
