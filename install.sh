#!/usr/bin/env bash
# Install smarter-cni on this node: `sudo ./install.sh [options]`.
#
# Checks the prerequisites (and installs missing ones with apt-get where it
# can), puts the package into its own virtual environment (the system Python
# is left alone), then hands over to `smarter-cni install`, which installs
# the plugin, config, network and DNS service and runs the self-test.
# Every option is passed on; see `./install.sh --help`. Safe to run again:
# it upgrades in place.
#
# Environment knobs:
#   SMARTER_CNI_PREFIX=DIR     where the venv goes (default /opt/smarter-cni)
#   SMARTER_CNI_LINK_DIR=DIR   where the `smarter-cni` command is linked (default /usr/local/bin)
#   SMARTER_CNI_SKIP_APT=1     never call apt-get; only say what is missing
#   PYTHON=PATH                the interpreter to build the venv on (default: the
#                              distribution's, below, when it is 3.9 or newer;
#                              else python3 on PATH); remembered in program.json
#                              for later runs while it works
#   SMARTER_CNI_SYSTEM_PYTHON=PATH  the distribution's interpreter (default /usr/bin/python3)
# (SMARTER_CNI_STATE_DIR and SMARTER_CNI_UNIT_DIR are passed on to `smarter-cni install`.)
#
# What it makes in the prefix and the link are listed in $PREFIX/program.json:
# `smarter-cni uninstall --purge` removes exactly those.
set -euo pipefail

PREFIX="${SMARTER_CNI_PREFIX:-/opt/smarter-cni}"
LINK_DIR="${SMARTER_CNI_LINK_DIR:-/usr/local/bin}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$PREFIX/venv"
# The venv's interpreter. The plugin starts it on every pod ADD and DEL, so
# the distribution's is preferred over whatever `python3` is first on PATH:
# the OS keeps it patched, and a pyenv-style build there starts slower
# (docs/internals.md, "Which interpreter the venv is built on").
SYSTEM_PYTHON="${SMARTER_CNI_SYSTEM_PYTHON:-/usr/bin/python3}"
PYTHON_GIVEN="${PYTHON:-}"
PYTHON="$PYTHON_GIVEN"
PYTHON_WHY=""
PYTHON_RECORDED=""   # a PYTHON= an earlier run was given (program.json "python")
if [[ -z $PYTHON_GIVEN && -f $PREFIX/program.json ]]; then
    PYTHON_RECORDED="$(sed -n 's/^  "python": "\(.*\)",\{0,1\}$/\1/p' "$PREFIX/program.json")"
fi

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: sudo ./install.sh [--mode bridge|docker] [--subnet CIDR] [--gateway IP]
                         [--dns-ip IP] [--subnet6 PREFIX] [--ipv6] [--ipv6-only]
                         [--dns-ip6 IP] [--bridge NAME] [--network NAME]
                         [--dns-interface NAME] [--service auto|systemd|supervisor]
                         [--domain DOMAIN] [--cni-bin-dir DIR] [--cni-conf-dir DIR]
                         [--k3s] [--no-selftest] [--no-dns-service] [--json]

  --mode bridge   (default) a Linux bridge `smarter0`, 10.42.0.0/16, DNS on 169.254.0.2;
                  for containerd (k3s' default), CRI-O, podman
  --mode docker   the Docker network `mynet`, 172.38.0.0/16, DNS on 172.38.0.2;
                  for Docker via cri-dockerd (k3s --docker)
  --k3s           the CNI dirs k3s uses with --flannel-backend=none, and print
                  the k3s server/agent command lines
  --ipv6          dual-stack: pods also get IPv6 from fd00:10:42::/64 (or --subnet6)
  --ipv6-only     bridge mode without IPv4: pods get only IPv6 (fd00:10:42::/64 or
                  --subnet6), the node DNS listens only on fd00:169:254::2 (or --dns-ip6)

Everything after the checks is `smarter-cni install`: see `smarter-cni install --help`.
Remove it all again with `sudo smarter-cni uninstall`.
EOF
}

MODE=bridge
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        -h|--help) usage; exit 0 ;;
        --mode) MODE="${args[$((i + 1))]:-}" ;;
        --mode=*) MODE="${args[$i]#--mode=}" ;;
    esac
done
case "$MODE" in
    bridge|docker) ;;
    *) die "--mode must be 'bridge' or 'docker', not '$MODE'" ;;
esac

[[ $(id -u) -eq 0 ]] || die "must be run as root (it changes the node's network): sudo ./install.sh $*"

# ---------------------------------------------------------------- prerequisites

missing=()      # what is missing, as the operator would name it
packages=()     # the Debian packages that provide it

python_ok() {  # $1 runs, is 3.9 or newer and can make a venv with pip in it
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1 \
        && "$1" -c 'import venv, ensurepip' >/dev/null 2>&1
}

python_recent() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1
}

# Sets PYTHON and PYTHON_WHY: PYTHON= if given; else the distribution's
# interpreter if it is 3.9 or newer (when it lacks venv support, python3 on
# PATH if that has it, else the distribution's, for apt-get to complete);
# else python3 on PATH.
choose_python() {
    if [[ -n $PYTHON_GIVEN ]]; then
        PYTHON="$PYTHON_GIVEN"; PYTHON_WHY="PYTHON=$PYTHON_GIVEN"
    elif [[ -n $PYTHON_RECORDED ]] && python_ok "$PYTHON_RECORDED"; then
        PYTHON="$PYTHON_RECORDED"
        PYTHON_WHY="PYTHON=$PYTHON_RECORDED of an earlier run, remembered in $PREFIX/program.json"
    elif [[ -x $SYSTEM_PYTHON ]] && python_ok "$SYSTEM_PYTHON"; then
        PYTHON="$SYSTEM_PYTHON"; PYTHON_WHY="the distribution's"
    elif [[ -x $SYSTEM_PYTHON ]] && python_recent "$SYSTEM_PYTHON" && ! python_ok python3; then
        PYTHON="$SYSTEM_PYTHON"; PYTHON_WHY="the distribution's"
    elif [[ -x $SYSTEM_PYTHON ]] && python_recent "$SYSTEM_PYTHON"; then
        PYTHON=python3
        PYTHON_WHY="python3 on PATH; $SYSTEM_PYTHON has no venv support (Debian: apt-get install python3-venv)"
    else
        PYTHON=python3; PYTHON_WHY="python3 on PATH"
        if [[ -x $SYSTEM_PYTHON ]]; then PYTHON_WHY+="; $SYSTEM_PYTHON is older than 3.9"; fi
    fi
    if [[ -n $PYTHON_RECORDED && $PYTHON != "$PYTHON_RECORDED" ]]; then
        PYTHON_WHY+="; PYTHON=$PYTHON_RECORDED of an earlier run no longer works"
    fi
}

check_prerequisites() {
    missing=()
    packages=()
    choose_python
    if [[ -n $PYTHON_GIVEN ]] && ! command -v "$PYTHON" >/dev/null 2>&1; then
        die "PYTHON=$PYTHON_GIVEN is not a command; name a python3 (3.9 or newer) or leave PYTHON unset"
    elif ! command -v "$PYTHON" >/dev/null 2>&1; then
        missing+=("python3 (3.9 or newer)"); packages+=(python3 python3-venv)
    elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
        die "$PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())'); smarter-cni needs 3.9 or newer"
    elif ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        missing+=("python3 venv support (ensurepip)"); packages+=(python3-venv)
    fi
    command -v ip >/dev/null 2>&1 || { missing+=("ip (iproute2)"); packages+=(iproute2); }
    command -v nsenter >/dev/null 2>&1 || { missing+=("nsenter (util-linux)"); packages+=(util-linux); }
    if [[ $MODE == bridge ]] && ! command -v iptables >/dev/null 2>&1 \
            && ! command -v nft >/dev/null 2>&1; then
        missing+=("iptables or nft"); packages+=(iptables)
    fi
    if [[ $MODE == docker ]]; then
        local sock="${DOCKER_HOST:-unix:///var/run/docker.sock}"
        sock="${sock#unix://}"
        if [[ ! -S $sock ]]; then
            if command -v dockerd >/dev/null 2>&1; then
                die "Docker is installed but not running (no socket at $sock): start it (systemctl start docker) and run install.sh again"
            fi
            missing+=("Docker (for --mode docker)"); packages+=(docker.io)
        fi
    fi
}

check_prerequisites
if ((${#missing[@]})); then
    say "missing: $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g')"
    if [[ ${SMARTER_CNI_SKIP_APT:-0} != 1 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing with apt-get: ${packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${packages[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${packages[@]}"; } \
            || die "apt-get could not install ${packages[*]}; install them by hand and run install.sh again"
        check_prerequisites
        ((${#missing[@]} == 0)) || die "still missing after apt-get: ${missing[*]}"
    else
        die "missing prerequisite(s): ${missing[*]}; install them (Debian packages: ${packages[*]}) and run install.sh again"
    fi
fi
# The self-test needs nothing more: it pings and resolves from Python inside
# the test pods (no ping, no dig).

# ---------------------------------------------------------------- the package

made=()          # what this run creates in the prefix (program.json lists it for --purge)
made_prefix=0
[[ -d $PREFIX ]] || made_prefix=1
for part in venv share docs; do
    [[ -e $PREFIX/$part ]] || made+=("$part")
done

base_of() {  # the real path of the interpreter $1 runs on (a venv's: its base); "" if it does not run
    "$1" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable))' \
        2>/dev/null || true
}

WANT_BASE="$(base_of "$PYTHON")"
[[ -n $WANT_BASE ]] || die "$PYTHON does not run"
say "python: $PYTHON -> $WANT_BASE ($("$PYTHON" -c 'import platform; print(platform.python_version())'); $PYTHON_WHY)"

# The venv is kept when it runs on that interpreter. One that runs on another
# (an older install.sh took python3 from PATH, or PYTHON= names another) or
# does not run at all (its interpreter was removed, e.g. by a distribution
# upgrade) is built anew beside the old one and swapped in with two renames
# once the package is in it: a failed build leaves the old one as it was,
# and the plugin's launchers (`#!$VENV/bin/python`) never see a venv
# without the package for longer than those renames.
BUILD="$VENV"
if [[ -e $VENV || -L $VENV ]]; then
    HAVE_BASE="$(base_of "$VENV/bin/python")"
    if [[ -z $HAVE_BASE ]]; then
        say "the virtual environment in $VENV does not run (its interpreter is gone?): rebuilding it"
        BUILD="$PREFIX/.venv.new"
    elif [[ $HAVE_BASE != "$WANT_BASE" ]]; then
        say "the virtual environment in $VENV runs on $HAVE_BASE: rebuilding it on $WANT_BASE"
        BUILD="$PREFIX/.venv.new"
    fi
fi
VPY="$BUILD/bin/python"

SRC_COPY=""
cleanup() {  # a failed run leaves the old venv as it was and no half-built new one
    if [[ -n $SRC_COPY ]]; then rm -rf "$SRC_COPY"; fi
    if [[ $BUILD != "$VENV" ]]; then rm -rf "$BUILD"; fi
}
trap cleanup EXIT

if [[ ! -x $VPY ]]; then
    say "creating a virtual environment in $VENV"
    mkdir -p "$PREFIX"
    rm -rf "$BUILD"   # .venv.new of an interrupted run, or a venv dir with no python
    "$PYTHON" -m venv "$BUILD" || die "$PYTHON -m venv $BUILD failed (Debian: apt-get install python3-venv)"
fi

# Build from a copy, so the checkout stays clean (pip builds in the source tree).
SRC_COPY="$(mktemp -d "${TMPDIR:-/tmp}/smarter-cni-src.XXXXXX")"
cp -r "$HERE/pyproject.toml" "$HERE/src" "$SRC_COPY/"
[[ -f $HERE/README.md ]] && cp "$HERE/README.md" "$SRC_COPY/" || echo "# smarter-cni" > "$SRC_COPY/README.md"
find "$SRC_COPY" -name __pycache__ -type d -prune -exec rm -rf {} +

say "installing the smarter-cni package into $VENV"
PIP=("$VPY" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall)
if "$VPY" -c 'import setuptools, wheel' >/dev/null 2>&1 \
        && "${PIP[@]}" --no-index --no-build-isolation "$SRC_COPY" >/dev/null 2>&1; then
    :   # built offline with the venv's own setuptools
elif "${PIP[@]}" --retries 1 --timeout 15 "$SRC_COPY" >/dev/null 2>&1; then
    :   # built with setuptools fetched from the package index
else
    # Offline and no build tools: the package is pure Python with no
    # dependencies, so copying it in is equivalent.
    say "pip could not build it (offline?); copying the package in instead"
    SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    rm -rf "$SITE/smarter_cni"
    cp -r "$SRC_COPY/src/smarter_cni" "$SITE/"
    for name in smarter-cni c2d; do
        printf '#!%s\nimport sys\nfrom smarter_cni.entry import main\nsys.exit(main())\n' \
            "$VENV/bin/python" > "$BUILD/bin/$name"
        chmod 0755 "$BUILD/bin/$name"
    done
fi
[[ -x $BUILD/bin/smarter-cni ]] || die "the package did not install: $BUILD/bin/smarter-cni is missing"

if [[ $BUILD != "$VENV" ]]; then
    # The build dir's path is in its scripts' first lines (pip writes them) and
    # in the activate scripts and pyvenv.cfg: name the final one instead.
    "$VPY" - "$BUILD" "$VENV" <<'EOF' || die "cannot rewrite the paths in $BUILD"
import os, sys
build, final = sys.argv[1], sys.argv[2]
bin_dir = os.path.join(build, "bin")
paths = [os.path.join(bin_dir, name) for name in os.listdir(bin_dir)]
for path in paths + [os.path.join(build, "pyvenv.cfg")]:
    if os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, "rb") as handle:
        data = handle.read()
    if build.encode() in data and (data.startswith(b"#!") or "activate" in path
                                   or path.endswith("pyvenv.cfg")):
        with open(path, "wb") as handle:
            handle.write(data.replace(build.encode(), final.encode()))
EOF
    OLD="$PREFIX/.venv.old"
    rm -rf "$OLD"
    if [[ -e $VENV || -L $VENV ]]; then
        mv "$VENV" "$OLD" || die "cannot move the old $VENV aside"
    fi
    mv "$BUILD" "$VENV" || { mv "$OLD" "$VENV"; die "cannot move the new virtual environment into $VENV"; }
    rm -rf "$OLD"
    BUILD="$VENV"
    VPY="$VENV/bin/python"
    # byte code that names the final paths in tracebacks
    "$VPY" -m compileall -q -f "$("$VPY" -c 'import os, smarter_cni; print(os.path.dirname(smarter_cni.__file__))')" \
        >/dev/null 2>&1 || true
    say "the virtual environment in $VENV now runs on $WANT_BASE"
fi
VPY="$VENV/bin/python"

# Templates (network configs, systemd unit) for `smarter-cni install`.
mkdir -p "$PREFIX/share"
shopt -s nullglob
for template in "$HERE"/deploy/*.conflist "$HERE"/deploy/*.service; do
    cp "$template" "$PREFIX/share/"
done
mkdir -p "$PREFIX/docs"
for doc in "$HERE"/docs/*.md "$HERE"/README.md; do
    cp "$doc" "$PREFIX/docs/"
done
shopt -u nullglob

rm -rf "$SRC_COPY"
SRC_COPY=""
trap - EXIT

# `smarter-cni` on PATH: a link to the venv's script (never over someone else's file).
TARGET="$VENV/bin/smarter-cni"
LINK="$LINK_DIR/smarter-cni"
if [[ -L $LINK && $(readlink "$LINK") == "$TARGET" ]]; then
    :   # already ours
elif [[ -e $LINK || -L $LINK ]]; then
    say "note: $LINK exists and is not this installation's; left alone (run $TARGET instead)"
    LINK=""
else
    mkdir -p "$LINK_DIR" && ln -s "$TARGET" "$LINK" || die "cannot link $LINK to $TARGET"
fi

PYTHON_KEEP="${PYTHON_GIVEN:-}"
[[ -n $PYTHON_KEEP || $PYTHON != "$PYTHON_RECORDED" ]] || PYTHON_KEEP="$PYTHON_RECORDED"
"$VPY" - "$PREFIX/program.json" "$made_prefix" "$LINK" "$TARGET" "$PYTHON_KEEP" "${made[@]}" <<'EOF' \
    || die "cannot write $PREFIX/program.json"
import json, os, sys
path, made_prefix, link, target, python, *made = sys.argv[1:]
try:
    with open(path) as handle:
        old = json.load(handle)
except (OSError, ValueError):
    old = {}
old = old if isinstance(old, dict) else {}
record = {"made_by": "install.sh", "made": sorted(set(old.get("made") or []) | set(made)),
          "made_prefix": bool(old.get("made_prefix")) or made_prefix == "1"}
if link:
    record.update(link=link, link_target=target)
elif old.get("link"):
    record.update(link=old["link"], link_target=old.get("link_target"))
if python:  # PYTHON= as given (a later run without PYTHON= uses it while it works)
    record["python"] = python
with open(path + ".tmp", "w") as handle:
    handle.write(json.dumps(record, indent=2) + "\n")
os.replace(path + ".tmp", path)
EOF

export SMARTER_CNI_PREFIX="$PREFIX"
exec "$VENV/bin/smarter-cni" install "$@"
