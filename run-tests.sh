#!/usr/bin/env bash
# Run the smarter-cni test suite: `sudo ./run-tests.sh [pytest args...]`.
#
# On a fresh Debian 12 / Raspberry Pi OS machine it installs what the tests
# need (only what is missing), makes a virtualenv in .venv with the package
# and its test tools, then runs `ruff check` and pytest. Extra arguments go to
# pytest, e.g. `sudo ./run-tests.sh tests/unit -k version`.
#
# Safe on a node where smarter-cni is installed and Docker runs: the tests use
# their own network names, bridges, state dirs and a private dockerd of their
# own (tests/helpers/dockerd.py), never the node's dockerd, and the session
# fails if the default install or docker0 changed (tests/conftest.py).
#
# Environment knobs:
#   SMARTER_CNI_SKIP_APT=1     never call apt-get (report missing packages only)
#   SMARTER_CNI_TEST_DOCKERD=system  run the docker tests against the node's
#                              dockerd on /var/run/docker.sock (started here if
#                              none answers, stopped afterwards); debugging only
#   SMARTER_CNI_SKIP_DOCKER=1  with =system: do not start dockerd
#   SMARTER_CNI_NODE_GUARD=0   do not fail the run when the node changed
#   SMARTER_CNI_TEST_TIMEOUT   seconds pytest may run before it is stopped (default 1500)
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"
REPO=$(pwd)
START=$(date +%s)

APT_PACKAGES=(
    iproute2 iptables docker.io containernetworking-plugins
    golang-go golang-github-appc-cni-dev dnsutils dnsmasq-base containerd
    busybox-static python3-venv procps iputils-ping openssl util-linux time nftables
)
VENV="$REPO/.venv"
DOCKERD_PID=""
DOCKERD_LOG=""

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nrun-tests.sh: error: %s\n' "$*" >&2; exit 1; }

stop_our_dockerd() {
    # Only the dockerd this script started, by its PID. Runs from the EXIT trap,
    # possibly with stdout gone: signal first, print afterwards, never abort.
    set +e
    if [[ -n "$DOCKERD_PID" ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        say "stopping the dockerd this script started (pid $DOCKERD_PID)" 2>/dev/null
        for _ in $(seq 1 30); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            echo "dockerd did not stop in 30 s; sending SIGKILL" 2>/dev/null
            kill -KILL "$DOCKERD_PID" 2>/dev/null
        fi
    fi
    if [[ -n "$DOCKERD_LOG" ]]; then
        rm -f "$DOCKERD_LOG"
    fi
}
# Signals become a normal exit so the EXIT trap always stops our dockerd
# (also when the output pipe closes, e.g. `./run-tests.sh | head`).
trap stop_our_dockerd EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "Debian packages: all ${#APT_PACKAGES[@]} present"
        return
    fi
    if [[ "${SMARTER_CNI_SKIP_APT:-}" == 1 ]]; then
        say "Debian packages missing (not installing, SMARTER_CNI_SKIP_APT=1): ${missing[*]}"
        return
    fi
    if [[ $EUID -ne 0 ]]; then
        say "Debian packages missing (need root to install): ${missing[*]}"
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

make_venv() {
    local stamp="$VENV/.smarter-cni-installed" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        say "virtualenv $VENV is broken; recreating it"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating virtualenv $VENV"
        /usr/bin/python3 -m venv "$VENV"
    fi
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
        && "$VENV/bin/python" -c 'import smarter_cni, pytest' 2>/dev/null \
        && [[ -x "$VENV/bin/ruff" ]]; then
        say "virtualenv $VENV is up to date"
        return
    fi
    say "installing smarter-cni and its test tools into $VENV (pip install -e '.[test]')"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    "$VENV/bin/python" -m pip install -q -e '.[test]' </dev/null
    echo "$want" >"$stamp"
}

docker_answers() {
    command -v docker >/dev/null 2>&1 || return 1
    [[ -S /var/run/docker.sock ]] || return 1
    timeout 10 docker version >/dev/null 2>&1
}

ensure_dockerd() {
    if [[ "${SMARTER_CNI_TEST_DOCKERD:-private}" != system ]]; then
        # The docker tests start private dockerds of their own; the node's is not needed.
        command -v dockerd >/dev/null 2>&1 \
            || say "dockerd not found (package docker.io): docker tests will be skipped"
        return
    fi
    if [[ "${SMARTER_CNI_SKIP_DOCKER:-}" == 1 ]]; then
        say "not starting dockerd (SMARTER_CNI_SKIP_DOCKER=1)"
        return
    fi
    if docker_answers; then
        say "dockerd: already running"
        return
    fi
    if [[ $EUID -ne 0 ]]; then
        say "dockerd is not running and starting it needs root; docker tests will not run"
        return
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found (package docker.io)"
    DOCKERD_LOG=$(mktemp /tmp/smarter-cni-dockerd.XXXXXX.log)
    say "starting dockerd in the background (log: $DOCKERD_LOG)"
    dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    DOCKERD_PID=$!
    local waited=0
    until docker_answers; do
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            DOCKERD_PID=""
            die "dockerd exited while starting (log above)"
        fi
        if (( waited >= 60 )); then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer on /var/run/docker.sock within 60 s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "dockerd is up (pid $DOCKERD_PID, ${waited}s)"
}

main() {
    if [[ $EUID -ne 0 ]]; then
        say "not running as root: root-only tests will be skipped (use: sudo ./run-tests.sh)"
    fi
    install_packages
    make_venv
    ensure_dockerd
    say "tools: $("$VENV/bin/python" --version 2>&1), $(go version 2>/dev/null | cut -d' ' -f3 || echo 'no go')," \
        "$(docker version --format 'docker {{.Server.Version}}' 2>/dev/null || echo 'no docker')," \
        "$(iptables --version 2>/dev/null || echo 'no iptables')"

    local lint_paths=() dir
    for dir in src tests bench; do
        [[ -d "$dir" ]] && lint_paths+=("$dir")
    done
    say "ruff check ${lint_paths[*]}"
    "$VENV/bin/ruff" check "${lint_paths[@]}" || die "ruff found problems (see above)"

    # The libcni driver's Go build cache stays inside the (git-ignored) venv,
    # not in the invoking user's home under sudo.
    export GOCACHE="${GOCACHE:-$VENV/go-build-cache}"
    local limit="${SMARTER_CNI_TEST_TIMEOUT:-1500}"
    say "python -m pytest $* (time limit ${limit}s)"
    local rc=0
    timeout -k 30 "$limit" "$VENV/bin/python" -m pytest "$@" </dev/null || rc=$?
    local elapsed=$(( $(date +%s) - START ))
    case $rc in
        0) say "all tests passed (${elapsed}s)" ;;
        5) die "pytest collected no tests (exit 5), treated as a failure" ;;
        124|137) die "pytest did not finish within ${limit}s and was stopped" ;;
        *) die "pytest failed with exit code $rc (${elapsed}s)" ;;
    esac
}

main "$@"
