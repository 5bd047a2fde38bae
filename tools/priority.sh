# shellcheck shell=bash
# Sourced by tools/test.sh (kept out of tools/lib.sh, whose hash names the base image: a change there rebuilds it).
# Put the calling subshell ($BASHPID, never the script behind it: $$ would be that script) and what it starts from
# now on at the lowest CPU priority the machine offers: a cpu cgroup marked idle (cgroup v1 `cpu.idle`/`cpu.shares`,
# v2 `cpu.idle`/`cpu.weight`), else only nice 19. Nice alone is not enough: the Docker containers are their own
# cgroups, and with autogroups a niced process in an otherwise idle session still gets as much CPU as every container
# together. For `make test`'s static checks, run beside the end-to-end tests (tools/test.sh): they may use only what
# the lab leaves idle.
lowest_priority() {
  renice -n 19 -p "$BASHPID" >/dev/null 2>&1 || true
  local group weight_file weight
  if [ -d /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/cpu ]; then
    group=/sys/fs/cgroup/cpu/mlflow-ha-lowest weight_file=cpu.shares weight=2
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null && [ -w /sys/fs/cgroup ]; then
    group=/sys/fs/cgroup/mlflow-ha-lowest weight_file=cpu.weight weight=1
  else
    return 0
  fi
  mkdir -p "$group" 2>/dev/null || { log "lowest_priority: cannot create $group; nice 19 only"; return 0; }
  # Idle where the kernel has it (5.15+; the weight can no longer be written then), else the lowest weight.
  if ! { [ -e "$group/cpu.idle" ] && echo 1 >"$group/cpu.idle"; } 2>/dev/null; then
    echo "$weight" >"$group/$weight_file" 2>/dev/null || true
  fi
  echo "$BASHPID" >"$group/cgroup.procs" 2>/dev/null || log "lowest_priority: could not join $group; nice 19 only"
}
