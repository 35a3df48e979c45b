#!/usr/bin/env bash
# Run one command inside the emulated arm64 root that build-env.sh made, and pass its exit
# status through.
#
#   run.sh [-b SRC[:DST]]... [-B SRC[:DST]]... [-e NAME=VALUE]... [-n] [ROOT_DIR] -- COMMAND...
#
#   -b  bind host folder SRC read-only at DST inside the root (DST defaults to SRC)
#   -B  the same, read-write
#   -e  set an environment variable inside (wins over the defaults below)
#   -n  no default binds (default: this repo read-only at its own path, host /tmp read-write)
#   ROOT_DIR defaults to $HALPC_ARM64_ROOT or /var/cache/halpc/arm64.
#
# The command sees only: PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8
# QEMU_CPU=cortex-a72 PYTHONPATH=<repo>/compiler:<repo>/runtime_stub (those that exist).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
root=${HALPC_ARM64_ROOT:-/var/cache/halpc/arm64}
binds=() envs=() defaults=1 dashdash=0
usage() { sed -n '5,13p' "$0" >&2; exit 2; }
while [[ $# -gt 0 && $dashdash == 0 ]]; do
    case $1 in
        -b) binds+=("ro:$2"); shift 2 ;;
        -B) binds+=("rw:$2"); shift 2 ;;
        -e) envs+=("$2"); shift 2 ;;
        -n) defaults=0; shift ;;
        --) dashdash=1; shift ;;
        -*) usage ;;
        *) root=$1; shift ;;
    esac
done
[[ $dashdash == 1 && $# -gt 0 ]] || usage
[[ -x $root/usr/bin/env ]] || { echo "run.sh: no arm64 root at $root (run build-env.sh)" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "run.sh: needs root (chroot, mount)" >&2; exit 2; }
grep -qsx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
    { echo "run.sh: no qemu-aarch64 binfmt handler (after a reboot?): run build-env.sh" >&2; exit 2; }

pypath=
for d in compiler runtime_stub; do [[ -d $repo/$d ]] && pypath+=${pypath:+:}$repo/$d; done
if [[ $defaults == 1 ]]; then binds=("rw:/tmp" "ro:$repo" "${binds[@]}"); fi

# Qemu-user reads QEMU_CPU from the environment that binfmt hands it, i.e. the environment
# of the exec'd process; without cortex-a72 onnxruntime's import crashed under qemu's default
# CPU model. It is set for /usr/bin/env itself too and again after env -i for all it starts.
export QEMU_CPU=cortex-a72

# Qemu-user shows the guest the host's /proc/cpuinfo (x86). With that and /sys both present,
# onnxruntime's cpuinfo library segfaults at import; with /sys absent it only warns. So the
# guest gets a /proc/cpuinfo of Cortex-A72 cores (a Raspberry Pi 4's), one per host CPU.
ncpu=$(ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l)
for ((i = 0; i < ncpu; i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
done >"$root/etc/.halpc-cpuinfo.$$"
mv "$root/etc/.halpc-cpuinfo.$$" "$root/etc/halpc-cpuinfo"   # atomic: runs may overlap

# The mounts live in a private mount namespace: they vanish when the command ends, even if it
# is killed, so nothing can stay mounted under the root (and rm -rf of the root stays safe).
exec unshare --mount --propagation private -- bash -euo pipefail -c '
    root=$1; nbinds=$2; shift 2
    mount -t proc proc "$root/proc"
    mount --bind "$root/etc/halpc-cpuinfo" "$root/proc/cpuinfo"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    for ((i = 0; i < nbinds; i++)); do
        mode=${1%%:*} spec=${1#*:}; shift
        src=${spec%%:*} dst=${spec#*:}
        mkdir -p "$root$dst"
        mount --rbind "$src" "$root$dst"
        [[ $mode == rw ]] || mount -o remount,bind,ro "$root$dst"
    done
    # Start in the same folder as on the host when the root has it (a bound project), else /.
    cwd=$1; shift
    [[ -d $root$cwd ]] || cwd=/
    exec chroot "$root" /usr/bin/env -i -C "$cwd" "$@"
' _ "$root" "${#binds[@]}" "${binds[@]}" "$PWD" \
    PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU=cortex-a72 \
    PYTHONPATH="$pypath" "${envs[@]}" "$@"
