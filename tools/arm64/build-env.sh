#!/usr/bin/env bash
# Build, or bring up to date, an emulated Debian arm64 root whose venv /opt/venv holds
# onnxruntime and halpc's dependencies as aarch64 wheels from PyPI, so that ORT's ARM64 code
# path (no NCHWc, see shared/FINDINGS.md 1b) can be run on this x86-64 machine.
#
#   build-env.sh [ROOT_DIR [PIP_REQUIREMENT...]]     (as root)
#
#   ROOT_DIR   default $HALPC_ARM64_ROOT or /var/cache/halpc/arm64 ("" also means default)
#   PIP_REQUIREMENT...  what pip download takes ("numpy==2.4.6", "-r file.txt"); default:
#              numpy pyzmq onnx onnx-graphsurgeon click jinja2 pydantic. onnxruntime==$HALPC_ORT_VERSION
#              is always added; that defaults to the version in this repo's .venv.
#   HALPC_ARM64_MIRROR, HALPC_ARM64_SUITE override the Debian mirror and suite, which are
#              otherwise this machine's own (apt sources, /etc/os-release).
#
# Idempotent: each stage leaves a marker, a second run with the same inputs only checks them;
# another ORT version or package list reinstalls into the same venv. Run commands inside with
# run.sh beside this file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
root=${1:-${HALPC_ARM64_ROOT:-/var/cache/halpc/arm64}}
shift $(($# > 0 ? 1 : 0))
reqs=("$@")
[[ ${#reqs[@]} -gt 0 ]] || reqs=(numpy pyzmq onnx onnx-graphsurgeon click jinja2 pydantic)
log() { echo "build-env: $*" >&2; }
die() { log "$*"; exit 1; }
[[ $EUID -eq 0 ]] || die "needs root (apt-get, binfmt, debootstrap, chroot)"
[[ $root == /* && $root != / ]] || die "ROOT_DIR must be an absolute path other than /"

ort=${HALPC_ORT_VERSION:-}
if [[ -z $ort && -x $repo/.venv/bin/python ]]; then
    ort=$("$repo/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))' 2>/dev/null || true)
fi
[[ -n $ort ]] || die "no onnxruntime in $repo/.venv: set HALPC_ORT_VERSION"

# One builder at a time per root (two test sessions may start together).
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9

# Everything that decides the venv's contents; the file-hash covers "-r FILE" arguments.
stamp_text=$(
    echo "onnxruntime==$ort"
    printf '%s\n' "${reqs[@]}"
    for r in "${reqs[@]}"; do [[ -f $r ]] && sha256sum "$r"; done
    true
)

# --- host tools: qemu-user-static registers the aarch64 binfmt handler, debootstrap builds.
missing=()
for p in qemu-user-static binfmt-support debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- binfmt: in a container without systemd nobody mounts binfmt_misc, so the package's
# postinst could not register qemu-aarch64; mount it and (re)enable the handler.
bf=/proc/sys/fs/binfmt_misc
[[ -e $bf/register ]] || mount -t binfmt_misc binfmt_misc "$bf" ||
    die "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?): arm64 binaries cannot run"
[[ -e $bf/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 ||
    update-binfmts --import qemu-aarch64
grep -qx enabled "$bf/qemu-aarch64" || echo 1 >"$bf/qemu-aarch64"
interp=$(sed -n 's/^interpreter //p' "$bf/qemu-aarch64")
flags=$(sed -n 's/^flags: //p' "$bf/qemu-aarch64")

# The binfmt handler is kernel state, lost at a reboot, so it is checked before this exit.
if [[ -f $root/.halpc-ready && $(cat "$root/.halpc-ready") == "$stamp_text" ]]; then
    log "$root is up to date (onnxruntime $ort)"
    exit 0
fi
rm -f "$root/.halpc-ready"   # from here on the venv may change: not ready until the end

# --- base system. The marker holds what it was built from; a missing marker means a run
# that stopped half-way (or never ran), so whatever is there is thrown away.
suite=${HALPC_ARM64_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
mirror=${HALPC_ARM64_MIRROR:-$(
    # First URI of a deb822 stanza (or a one-line "deb" entry) that serves $suite itself.
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$suite" '
        /^$/ { if (ok && uri) { print uri; exit } ok = 0; uri = "" }
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
        END { if (ok && uri) print uri }'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v s="$suite" '$1 == "deb" && $3 == s { print $2 }'
    true   # either file may be missing
)}
mirror=${mirror%%$'\n'*}
[[ -n $suite && -n $mirror ]] || die "cannot find Debian suite/mirror: set HALPC_ARM64_SUITE/MIRROR"
base_text="arm64 $suite $mirror minbase python3,python3-venv,python3-pip"
if [[ ! -f $root/.halpc-base || $(cat "$root/.halpc-base") != "$base_text" ]]; then
    if [[ -e $root ]]; then
        # Never delete through a mount (run.sh binds the repo into the root).
        ! grep -q " $root/" /proc/self/mounts || die "something is mounted under $root"
        log "removing unfinished or outdated $root"
        rm -rf --one-file-system "$root"
    fi
    log "debootstrap $suite arm64 from $mirror (stage 1, native)"
    # Private mount namespace: debootstrap may bind /dev nodes; none may outlive it.
    unshare --mount --propagation private -- debootstrap --arch=arm64 --foreign \
        --variant=minbase --include=python3,python3-venv,python3-pip \
        "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; die "stage 1 failed, log: $root.log"; }
    # Without the F flag the kernel opens the interpreter inside the chroot.
    if [[ $flags != *F* ]]; then mkdir -p "$root$(dirname "$interp")"; cp "$interp" "$root$interp"; fi
    log "debootstrap stage 2 (emulated, several minutes)"
    "$here/run.sh" -n -e PATH=/usr/sbin:/usr/bin:/sbin:/bin "$root" -- \
        /debootstrap/debootstrap --second-stage >>"$root.log" 2>&1 || { tail -20 "$root.log" >&2; die "stage 2 failed, log: $root.log"; }
    rm -f "$root"/var/cache/apt/archives/*.deb   # 44 MB that nothing reads again
    echo "$base_text" >"$root/.halpc-base"
fi

# --- venv, made anew whenever its inputs change so that it holds exactly what they resolve
# to (pip would keep packages an older ORT needed). Wheels for the root's Python are fetched
# here on the x86 side (pip download resolves for another platform); inside, pip installs
# from that folder without network.
pyver=$(readlink "$root/usr/bin/python3")   # python3.11
pyver=${pyver#python}
rm -rf "$root/opt/venv"
log "creating /opt/venv (python $pyver)"
"$here/run.sh" -n "$root" -- /usr/bin/python3 -m venv /opt/venv
hostpy=python3
"$hostpy" -m pip --version >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    hostpy=/usr/bin/python3
}
wheels=$root/var/cache/halpc-wheels
rm -rf "$wheels"
log "downloading aarch64 wheels: onnxruntime==$ort ${reqs[*]}"
"$hostpy" -m pip download -q --dest "$wheels" --only-binary=:all: --implementation cp \
    --python-version "$pyver" --platform manylinux_2_28_aarch64 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    "onnxruntime==$ort" "${reqs[@]}"
log "installing $(ls "$wheels" | wc -l) wheels into /opt/venv (emulated)"
"$here/run.sh" -n -e PIP_DISABLE_PIP_VERSION_CHECK=1 "$root" -- /bin/sh -c \
    'pip install -q --no-index --find-links "$1" "$1"/*.whl' _ "${wheels#"$root"}"
rm -rf "$wheels" "$root/root/.cache/pip"
"$here/run.sh" -n "$root" -- python -c \
    "import platform, numpy, onnxruntime as o; assert o.__version__ == '$ort', o.__version__; print('build-env:', platform.machine(), 'onnxruntime', o.__version__)"
echo "$stamp_text" >"$root/.halpc-ready"
log "ready: $root ($(du -sh --one-file-system "$root" | cut -f1))"
