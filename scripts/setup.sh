#!/usr/bin/env bash
# Fresh-machine setup for Sensorium (called by `make setup`; CI runs it through `make test`).
#
# Idempotent and quick when already done: apt runs only when a package is missing, the venv is
# (re)installed only when pyproject.toml changed (its hash is stamped in .venv) or a tool of its test extra is
# missing, mounts only when absent.
# An existing .venv is kept as it is (others may be using it): it is updated in place, never recreated.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.sensorium-setup.sha256"
log() { printf '[setup] %s\n' "$*" >&2; }

[[ "$(id -u)" == 0 ]] || log "warning: not root; apt and mounts will fail (the agent and its tests need root)"

# --- Debian packages ----------------------------------------------------------------------------
# Toolchain for CO-RE probes (clang -target bpf, bpftool for vmlinux.h, libbpf.so.1 for the ctypes
# binding), bpftrace (cross-checks in tests), rsyslog (syslog exporter peer), kmod/iproute2/procps/psmisc
# (used by tests), python3-venv for the venv, gcc (the native ring drain and JSON formatter, built on first
# use; its sanitizer runtimes for their fuzz test), libclang-rt-14-dev (clang's libFuzzer, ASan and UBSan
# runtimes: the coverage-guided fuzzing of that C, tests/fuzz).
PKGS=(clang gcc llvm libbpf-dev bpftool libelf-dev zlib1g-dev make bpftrace rsyslog
      python3-venv kmod iproute2 procps psmisc util-linux file ca-certificates libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "apt: all ${#PKGS[@]} packages present"
fi
# Debian's rsyslog package starts a system rsyslogd; the tests run their own instance with their own
# config, so the system one is left alone (it does not hold the loopback ports the tests use).

# --- pseudo filesystems libbpf and the probes need ----------------------------------------------
mount_if_absent() {  # fstype target
    local fstype="$1" target="$2"
    if awk -v t="$target" -v f="$fstype" '$2 == t && $3 == f { found = 1 } END { exit !found }' /proc/self/mounts; then
        return 0
    fi
    [[ -d "$target" ]] || { log "mount: $target does not exist (kernel without $fstype?), skipped"; return 0; }
    if mount -t "$fstype" "$fstype" "$target"; then log "mount: $fstype on $target"
    else log "mount: could not mount $fstype on $target"; fi
}
mount_if_absent tracefs /sys/kernel/tracing
mount_if_absent securityfs /sys/kernel/security
# No bpffs: nothing but pinning needs it (enforcement.persist mounts /sys/fs/bpf itself), and a bpffs mount
# is not empty on kernels with CONFIG_BPF_PRELOAD (progs.debug, maps.debug).

# --- Python venv -----------------------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    if [[ -e "$VENV" ]]; then
        log "venv: $VENV is broken or too old; recreating"
        rm -rf "$VENV"
    fi
    log "venv: creating $VENV with $("$PY" --version 2>&1) ($(command -v "$PY"))"
    "$PY" -m venv "$VENV"
fi
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
# The test extra carries the lint tools (`make lint`: ruff, mypy, pinned): a venv stamped before they were
# added, or one they were removed from, is installed again as if pyproject.toml had changed.
if [[ "$want" != "$have" || ! -x "$VENV/bin/ruff" || ! -x "$VENV/bin/mypy" ]]; then
    log "venv: pyproject.toml changed (or first run, or lint tools missing): pip install -e '.[test,kafka,k8s,otlp]'"
    started=$(date +%s)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test,kafka,k8s,otlp]"
    echo "$want" > "$STAMP"
    log "venv: installed in $(( $(date +%s) - started ))s"
else
    log "venv: up to date with pyproject.toml"
fi

# --- peers the tests start (each script is idempotent and caches what it builds) --------------------
# A peer script that offers an `install` command (e.g. scripts/peers/kafka.sh) fetches and caches its
# binary here, so the network work happens in setup and the tests only start the peer.
for s in "$ROOT"/scripts/peers/*.sh; do
    [[ -f "$s" ]] || continue
    grep -qE "^#.*$(basename "$s") install\b" "$s" || continue
    log "peer: $(basename "$s") install"
    bash "$s" install >/dev/null
done
log "done"
