#!/usr/bin/env bash
# Boot one stock kernel under QEMU (virtme-ng, the host's root filesystem over 9p) and run pytest in it.
#
#   scripts/vm/run.sh KERNEL [pytest args...]
#
# KERNEL: a label from scripts/vm/kernels.lock ("bullseye" = 5.10, "bookworm" = 6.1, "backports" = 6.12), a release
# directory name under .vm/kernels/, or a path to a vmlinuz whose modules sit in <root>/lib/modules.
# The pytest output streams to stdout; the exit code is pytest's exit code inside the guest (read back
# from a file the guest writes into the shared repo: vng's own exit status is not trusted), or 124 on
# timeout, or 125 when the guest never reported one (boot failure, panic).
#
# Environment: SENSORIUM_VM_TIMEOUT (seconds for the whole guest, default 2700),
# SENSORIUM_VM_TEST_TIMEOUT (pytest-timeout per test in the guest, default 900: everything runs about
# ten times slower under emulation), SENSORIUM_VM_MEMORY (default 2G), SENSORIUM_VM_CPUS (default 1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VM="${SENSORIUM_VM_DIR:-$ROOT/.vm}"
VNG="$VM/vng-venv/bin/vng"
export PATH="$VM/vng-venv/bin:$PATH:/usr/sbin:/sbin"

log() { printf '[vm-run] %s\n' "$*" >&2; }

(($# >= 1)) || { echo "usage: $0 KERNEL [pytest args...] | $0 KERNEL --cmd COMMAND [args...]" >&2; exit 2; }
kernel="$1"; shift
# --cmd: run COMMAND (from the repo root, e.g. `.venv/bin/python benchmarks/fanotify_bench.py`) instead
# of pytest, e.g. a benchmark inside the guest; the exit code is the command's.
runner=(.venv/bin/python -m pytest -p no:cacheprovider "--timeout=${SENSORIUM_VM_TEST_TIMEOUT:-900}")
what=pytest
if [[ "${1:-}" == "--cmd" ]]; then
    shift
    (($# >= 1)) || { echo "$0 KERNEL --cmd needs a command" >&2; exit 2; }
    runner=()
    what=command
fi
[[ -x "$VNG" ]] || { log "virtme-ng missing: run scripts/vm/prepare.sh first"; exit 2; }

if [[ -f "$kernel" ]]; then
    kimg="$(readlink -f "$kernel")"
elif [[ -d "$VM/kernels/$kernel" ]]; then
    kroot="$(readlink -f "$VM/kernels/$kernel")"
    kimg="$(ls "$kroot"/boot/vmlinuz-* 2>/dev/null | head -1)"
else
    log "unknown kernel '$kernel' (have: $(ls "$VM/kernels" 2>/dev/null | tr '\n' ' '))"; exit 2
fi
[[ -n "${kimg:-}" && -f "$kimg" ]] || { log "no vmlinuz for '$kernel'"; exit 2; }
release="$(basename "$kimg")"; release="${release#vmlinuz-}"

# Per-run directory inside the repo: the guest sees the repo read-write through --rwdir. A VM directory outside
# the repo (SENSORIUM_VM_DIR: a worktree using the main tree's kernels) is shared read-write too: the guest
# writes its exit code and the probe cache there.
vm_rw=()
case "$(readlink -f "$VM")/" in "$(readlink -f "$ROOT")"/*) ;; *) vm_rw=(--rwdir "$VM") ;; esac
run_dir="$VM/runs/$release.$$"
rm -rf "$run_dir"; mkdir -p "$run_dir/udev"
cache_dir="$VM/cache/$release"; mkdir -p "$cache_dir"

# The host has no udev, but the guest init waits for udevd to create /dev/virtio-ports/<name>
# (the channels vng's --exec uses for the script's I/O). This stand-in does exactly that and exits.
cat > "$run_dir/udev/udevd" <<'UDEVD'
#!/bin/sh
# stand-in udevd for the VM lane: name the virtio serial ports, then exit (no daemon needed)
mkdir -p /dev/virtio-ports
for d in /sys/class/virtio-ports/*; do
    [ -r "$d/name" ] || continue
    name="$(cat "$d/name")"; [ -n "$name" ] || continue
    ln -sf "../$(basename "$d")" "/dev/virtio-ports/$name"
done
exit 0
UDEVD
chmod +x "$run_dir/udev/udevd"

# The guest gets none of the host environment: everything it needs is written into the script, plus the
# caller's own SENSORIUM_* settings (e.g. SENSORIUM_COMPAT_OBSERVED), but not the lane's or the paths below.
# The Python installation behind .venv, and the repo's code directories, are also shared read-only on
# tags of their own that the guest mounts with the page cache on (cache=loose) and binds over the same
# paths: vng's root and repo shares keep no cache, and on 5.10 every stat() over them costs ~9 ms under
# emulation, so one `import sensorium.agent` took 39 s there (8 s cached; on 6.1 10 s -> 4-6 s).
# Nothing writes to these directories during a run (outputs go to build/, .vm/ and /tmp), so a
# cache that never revalidates is right. If the mounts fail, the guest runs on the uncached shares.
pyroot="$(readlink -f "$ROOT/.venv/bin/python")"; pyroot="$(dirname "$(dirname "$pyroot")")"
CACHED_DIRS=".venv core sensors exporters tests scripts"
qopts=""
for share in "senspy:$pyroot" "sensrepo:$ROOT"; do
    qopts+=" -fsdev local,id=${share%%:*},path=${share#*:},security_model=none,readonly=on"
    qopts+=" -device virtio-9p-pci,fsdev=${share%%:*},mount_tag=${share%%:*}"
done

quoted_args=""
for a in "${runner[@]}" "$@"; do quoted_args+=" $(printf '%q' "$a")"; done
passed_env=""
while read -r v; do
    case "$v" in SENSORIUM_VM_*|SENSORIUM_IN_VM|SENSORIUM_CACHE_DIR|SENSORIUM_BTF) continue ;; esac
    passed_env+="export $v=$(printf '%q' "${!v}")"$'\n'
done < <(compgen -e | grep '^SENSORIUM_' || true)
cat > "$run_dir/guest.sh" <<GUEST
#!/bin/bash
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 PYTHONUNBUFFERED=1
export CI=${CI:-}
export SENSORIUM_IN_VM=$(printf '%q' "$release")
export SENSORIUM_CACHE_DIR=$(printf '%q' "$cache_dir")
${passed_env}cd $(printf '%q' "$ROOT")
mnt() { mountpoint -q "\$2" 2>/dev/null || { mkdir -p "\$2"; mount -t "\$1" "\$1" "\$2" || echo "[guest] cannot mount \$1 on \$2"; }; }
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
mnt securityfs /sys/kernel/security
mnt bpf /sys/fs/bpf
cached() {
    mkdir -p "/run/sensorium-cached/\$1" && mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000 \\
        "\$1" "/run/sensorium-cached/\$1" 2>/dev/null
}
if cached senspy && cached sensrepo; then
    mount --bind /run/sensorium-cached/senspy $(printf '%q' "$pyroot")
    for d in $CACHED_DIRS; do mount --bind "/run/sensorium-cached/sensrepo/\$d" $(printf '%q' "$ROOT")/"\$d"; done
else
    echo "[guest] WARNING: the cached read-only shares did not mount: Python starts will be slow"
fi
# Probes are built against THIS kernel's BTF; keep it off 9p (large sequential reads there are slow and flaky).
if [ -r /sys/kernel/btf/vmlinux ]; then
    cp /sys/kernel/btf/vmlinux /dev/shm/vmlinux.btf && export SENSORIUM_BTF=/dev/shm/vmlinux.btf
    # prebuild.py built the probes on the host from the BTF extracted out of vmlinuz: same bytes?
    if [ -f $(printf '%q' "$(dirname "$(dirname "$kimg")")/vmlinux.btf") ] && ! cmp -s /dev/shm/vmlinux.btf $(printf '%q' "$(dirname "$(dirname "$kimg")")/vmlinux.btf"); then
        echo "[guest] WARNING: the BTF extracted on the host differs from /sys/kernel/btf/vmlinux: prebuilt probes will miss the cache"
    fi
fi
echo "[guest] kernel \$(uname -r); lsm=\$(cat /sys/kernel/security/lsm 2>/dev/null)"
$quoted_args
rc=\$?
echo "\$rc" > $(printf '%q' "$run_dir/rc")
sync
exit "\$rc"
GUEST
chmod +x "$run_dir/guest.sh"

timeout_s="${SENSORIUM_VM_TIMEOUT:-2700}"
log "booting $release (timeout ${timeout_s}s) with:$quoted_args"
started=$(date +%s)
# A private mount namespace lays the stand-in udevd over /usr/local/bin (a directory on the guest
# init's PATH) for QEMU's 9p server only; the host's /usr/local/bin is not touched.
# vng's output goes through a pipe (QEMU truncates a file given as its stdout), stdin is /dev/null.
set +e
unshare -m --propagation private bash -c '
    set -e
    mount -t overlay sensorium-vm-udev -o ro,lowerdir="$1":/usr/local/bin /usr/local/bin
    shift
    exec "$@"
' _ "$run_dir/udev" timeout --kill-after=30 "$timeout_s" \
    "$VNG" --run "$kimg" --disable-kvm --force-9p --cpus "${SENSORIUM_VM_CPUS:-1}" \
    --memory "${SENSORIUM_VM_MEMORY:-2G}" --qemu-opts="$qopts" --rwdir "$ROOT" "${vm_rw[@]}" \
    --append "lsm=lockdown,capability,landlock,yama,bpf" \
    --exec "$run_dir/guest.sh" < /dev/null 2>&1 | cat
vng_rc=${PIPESTATUS[0]}
set -e

elapsed=$(( $(date +%s) - started ))
if [[ -f "$run_dir/rc" ]]; then
    rc="$(cat "$run_dir/rc")"
elif ((vng_rc == 124)); then
    log "$release: timed out after ${timeout_s}s"; rc=124
else
    log "$release: the guest reported no exit code (vng exit $vng_rc): boot or guest failure"; rc=125
fi
log "$release: $what exit $rc after ${elapsed}s"
rm -rf "$run_dir"
exit "$rc"
