#!/usr/bin/env bash
# The README's first command on a fresh machine: a minimal Debian 12 root
# file system (`debootstrap --variant=minbase bookworm`: no python3, no ping,
# no dig, no iproute2, no docker) imported into Docker and run in its own
# network namespace. Inside it, `./install.sh` must end in `self-test
# passed`, and `smarter-cni status` (on PATH) must find no problem; then
# `smarter-cni uninstall --purge` must leave no link or config behind.
#
# Usage: sudo .ci/fresh_machine.sh   (needs a dockerd on DOCKER_HOST or
# /var/run/docker.sock that can reach the Debian mirror for apt-get)
#
# Environment: FRESH_SRC (the checkout to install, default this one), FRESH_ROOT (where the root file system is cached, default
# /var/cache/smarter-cni-fresh/bookworm), FRESH_MIRROR (debootstrap's mirror,
# default http://deb.debian.org/debian).
set -euo pipefail

REPO="${FRESH_SRC:-$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)}"
ROOT="${FRESH_ROOT:-/var/cache/smarter-cni-fresh/bookworm}"
MIRROR="${FRESH_MIRROR:-http://deb.debian.org/debian}"
IMAGE="smarter-cni-fresh:bookworm"
NAME="smarter-cni-fresh-$$"
LOG="$(mktemp -d "${TMPDIR:-/tmp}/smarter-cni-fresh.XXXXXX")"

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nfresh_machine.sh: error: %s\n' "$*" >&2; exit 1; }

cleanup() {
    set +e
    docker rm -f "$NAME" >/dev/null 2>&1
    rm -rf "$LOG"
}
trap cleanup EXIT

command -v docker >/dev/null || die "the docker client is missing (apt-get install docker.io)"
timeout 10 docker version >/dev/null 2>&1 || die "no dockerd answers (start one first)"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    if [[ ! -x "$ROOT/bin/bash" ]]; then
        command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
        say "debootstrap --variant=minbase bookworm $ROOT"
        rm -rf "$ROOT"
        mkdir -p "$(dirname "$ROOT")"
        debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$LOG/debootstrap.log" 2>&1 \
            || { tail -n 20 "$LOG/debootstrap.log" >&2; die "debootstrap failed"; }
    fi
    say "importing $ROOT as $IMAGE"
    tar -C "$ROOT" -c . | docker import - "$IMAGE" >/dev/null
fi

for tool in python3 ping dig ip iptables; do
    if docker run --rm "$IMAGE" sh -c "command -v $tool" >/dev/null 2>&1; then
        die "$IMAGE already has $tool: it is not a fresh machine"
    fi
done
echo "the fresh machine has no python3, ping, dig, ip or iptables"

say "starting $NAME (own network namespace, NET_ADMIN, SYS_ADMIN, NET_RAW)"
docker run -d --name "$NAME" --hostname fresh-node \
    --cap-add NET_ADMIN --cap-add SYS_ADMIN --cap-add NET_RAW \
    --security-opt systempaths=unconfined "$IMAGE" sleep 3600 >/dev/null
# The checkout as a user would have it (no venv, no git metadata).
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude='__pycache__' -c . \
    | docker exec -i "$NAME" sh -c 'mkdir -p /root/smarter-cni && tar -x -C /root/smarter-cni'

say "sudo ./install.sh (inside the fresh machine)"
rc=0
docker exec "$NAME" bash -c 'cd /root/smarter-cni && ./install.sh' 2>&1 | tee "$LOG/install.log" || rc=$?
((rc == 0)) || die "install.sh exited with $rc on a fresh machine"
grep -q "self-test passed" "$LOG/install.log" || die "install.sh did not end in 'self-test passed'"

say "smarter-cni status (from PATH, as a user would type it)"
docker exec "$NAME" bash -lc 'smarter-cni status' || die "smarter-cni status found a problem on the fresh install"

say "smarter-cni uninstall --purge"
docker exec "$NAME" bash -lc 'smarter-cni uninstall --purge' || die "uninstall failed"
docker exec "$NAME" bash -c '! command -v smarter-cni && ! ls /etc/cni/net.d/*smarter* 2>/dev/null && ! ip link show smarter0 2>/dev/null' \
    >/dev/null || die "uninstall left something behind"
say "fresh machine: install, self-test, status and uninstall passed"
