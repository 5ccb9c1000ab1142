#!/usr/bin/env bash
# Start a private Docker engine for the tests, without touching the host's network.
#
# Usage: scripts/start-dockerd.sh [DIR]      (or AIOELECT_DOCKERD_DIR=DIR)
#
# DIR (made if missing; a new temp dir when neither is given) holds everything
# the engine makes: its socket DIR/docker.sock, DIR/data (data root), DIR/exec
# (exec root), DIR/dockerd.pid and DIR/dockerd.log. On success the last line on
# stdout is the value to export, e.g. DOCKER_HOST=unix:///tmp/x/docker.sock;
# progress goes to stderr. Stop it with scripts/stop-dockerd.sh DIR.
#
# Installs Debian's docker.io when there is no dockerd (apt-get; needs root).
# dockerd runs with --iptables=false --ip6tables=false --bridge=none
# --ip-forward=false --ip-masq=false: no iptables rules, no docker0 bridge, no
# sysctl change. Containers use host networking (network_mode=host) only.
#
# Env: AIOELECT_DOCKERD_TIMEOUT (seconds to wait for the engine, default 60).
set -euo pipefail

log() { printf 'start-dockerd: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# On failure: stop what we started; keep the folder (and its dockerd.log) when
# the caller named it, remove it when we made it.
fail() {
    log "the end of $dir/dockerd.log:"
    tail -n 30 "$dir/dockerd.log" >&2 || true
    if (( made_dir )); then
        bash "$here/stop-dockerd.sh" "$dir" >&2 || true
    else
        bash "$here/stop-dockerd.sh" "$dir" --keep >&2 || true
    fi
    die "$*"
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
timeout_s=${AIOELECT_DOCKERD_TIMEOUT:-60}

dir=${1:-${AIOELECT_DOCKERD_DIR:-}}
made_dir=0
if [[ -z "$dir" ]]; then
    dir=$(mktemp -d /tmp/aioelect-dockerd.XXXXXX)
    made_dir=1
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# Marks the folder as ours, so that stop-dockerd.sh may remove it.
touch "$dir/.aioelect-dockerd"

sock="$dir/docker.sock"
# A unix socket path is limited to 107 bytes (containerd's lives deeper under exec/).
if (( ${#dir} > 60 )); then
    die "path too long for the engine's sockets (${#dir} > 60 chars): $dir; use a shorter DIR"
fi

if [[ -f "$dir/dockerd.pid" ]] && kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null; then
    die "a dockerd already runs from $dir (pid $(cat "$dir/dockerd.pid")); stop it first"
fi

install_docker() {
    [[ $(id -u) -eq 0 ]] || die "dockerd is missing and installing docker.io needs root"
    command -v apt-get >/dev/null || die "dockerd is missing and there is no apt-get to install docker.io"
    log "dockerd not found: installing Debian's docker.io"
    # The package must not start an engine with the default flags (they rewrite
    # the host's iptables and add a bridge): deny service starts during the install.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io
    } </dev/null >&2 || rc=$?
    if (( added_policy )); then rm -f "$policy"; fi
    (( rc == 0 )) || die "apt-get install docker.io failed (exit $rc)"
    command -v dockerd >/dev/null || die "docker.io installed but there is still no dockerd on PATH"
}

command -v dockerd >/dev/null || install_docker
command -v docker >/dev/null || die "no docker client on PATH"

mkdir -p "$dir/data" "$dir/exec"
rm -f "$sock" "$dir/dockerd.pid"

log "starting $(dockerd --version) under $dir"
start=$(date +%s.%N)
# setsid + redirections: the engine outlives this script and holds none of its
# file descriptors (a caller reading our stdout through a pipe is not blocked).
setsid dockerd \
    --host "unix://$sock" \
    --data-root "$dir/data" \
    --exec-root "$dir/exec" \
    --pidfile "$dir/dockerd.pid" \
    --iptables=false \
    --ip6tables=false \
    --bridge=none \
    --ip-forward=false \
    --ip-masq=false \
    </dev/null >"$dir/dockerd.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/dockerd.launcher.pid"

export DOCKER_HOST="unix://$sock"
deadline=$(( $(date +%s) + timeout_s ))
until docker info >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
        fail "dockerd exited before it answered (see above)"
    fi
    if (( $(date +%s) >= deadline )); then
        fail "dockerd did not answer on $sock within ${timeout_s}s (see above)"
    fi
    sleep 0.2
done
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
log "dockerd (pid $pid) answers after ${elapsed}s: storage driver $(docker info --format '{{.Driver}}' 2>/dev/null || echo '?')"
echo "DOCKER_HOST=unix://$sock"
