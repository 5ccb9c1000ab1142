#!/usr/bin/env bash
# Stop the Docker engine that scripts/start-dockerd.sh started from DIR, and
# remove DIR (unless --keep is given).
#
# Usage: scripts/stop-dockerd.sh DIR [--keep]     (or AIOELECT_DOCKERD_DIR=DIR)
#
# SIGTERM to dockerd (by its pidfile; it stops its containers and containerd),
# SIGKILL after 30 s, then SIGKILL to any process left whose command line names
# DIR (containerd and its shims), unmount what is still mounted under DIR and
# remove DIR. Only a folder marked by start-dockerd.sh is touched. Idempotent.
set -euo pipefail

log() { printf 'stop-dockerd: %s\n' "$*" >&2; }

dir=${1:-${AIOELECT_DOCKERD_DIR:-}}
keep=0
[[ "${2:-}" == "--keep" ]] && keep=1
[[ -n "$dir" ]] || { log "usage: stop-dockerd.sh DIR [--keep]"; exit 2; }
if [[ ! -d "$dir" ]]; then
    log "$dir does not exist: nothing to stop"
    exit 0
fi
dir=$(cd "$dir" && pwd)
if [[ ! -e "$dir/.aioelect-dockerd" ]]; then
    log "$dir was not made by start-dockerd.sh (no .aioelect-dockerd marker): not touching it"
    exit 1
fi

# The processes whose command line mentions DIR (dockerd, its containerd, shims).
procs_in_dir() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        [[ "$cmd" == *"$dir/"* ]] && echo "${p#/proc/}"
    done
    return 0
}

pid=""
for f in "$dir/dockerd.pid" "$dir/dockerd.launcher.pid"; do
    if [[ -s "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null; then
        pid=$(cat "$f")
        break
    fi
done
if [[ -n "$pid" ]]; then
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "dockerd still runs after 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
fi

left=$(procs_in_dir)
if [[ -n "$left" ]]; then
    log "killing what is left under $dir: pids $(echo $left)"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.2
fi

# Mount points under DIR, deepest first.
awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do
        umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done

if (( keep )); then
    log "kept $dir"
else
    rm -rf "$dir"
    log "removed $dir"
fi
