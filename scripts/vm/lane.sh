#!/usr/bin/env bash
# The VM lane: the tests that need hooks this host refuses (fentry/fexit/fmod_ret, BPF LSM, kprobes),
# run on three stock Debian kernels -- bullseye 5.10, bookworm 6.1 and bookworm-backports 6.12 -- side by
# side, one vCPU each.
#
#   scripts/vm/lane.sh [pytest args...]     (default selection: -m vm tests)
#
# Fails when either kernel's run fails, when pytest collected nothing, or when nothing passed:
# a lane whose tests were all skipped ran nothing, and a test counted as passed must have run.
# Env: SENSORIUM_VM_KERNELS (default "bullseye bookworm backports"), plus those of run.sh.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VM="${SENSORIUM_VM_DIR:-$ROOT/.vm}"
log() { printf '[vm-lane] %s\n' "$*" >&2; }

started=$(date +%s)
bash "$ROOT/scripts/vm/prepare.sh" || { log "prepare failed"; exit 1; }
log "prepare: $(( $(date +%s) - started ))s"

args=("$@")
default_selection=0
if ((${#args[@]} == 0)); then
    default_selection=1
    # Collect on the host (fast) which files hold `vm` tests and hand only those to the guests:
    # importing every test module under emulation costs about 30 s per guest.
    mapfile -t files < <(cd "$ROOT" && .venv/bin/python -m pytest --collect-only -q -m vm -p no:cacheprovider tests 2>/dev/null \
                         | grep -E '^[^ ]+\.py::' | cut -d: -f1 | sort -u)
    if ((${#files[@]} == 0)); then
        log "no test marked vm was collected on the host (pytest --collect-only -m vm tests)"; exit 1
    fi
    log "vm tests in: ${files[*]}"
    args=(-m vm "${files[@]}")
fi
read -r -a kernels <<< "${SENSORIUM_VM_KERNELS:-bullseye bookworm backports}"

# Default selection only: files left out, and test ids run instead, on every kernel ("all") and per kernel.
# The network sensor's programs are tracepoints and cgroup socket programs, which the host runs: its whole
# file runs there, and under emulation each of its tests starts a whole agent (10-20 min of a guest's
# budget). Every lane kernel still loads its programs in every configuration (the verifier budget test)
# and follows one TCP connection end to end.
# On 5.10 the BPF LSM persistence test (the agent and its CLI start several times: the slowest test of the
# lane) and the policy scope file are left out too: 5.10 runs the transaction test of that file; 6.1 and
# 6.12 run both.
declare -A LANE_DROP=( [all]="tests/test_network_sensor.py"
                       [bullseye]="tests/test_policy_scope.py tests/test_enforcement_bpf_lsm.py" )
declare -A LANE_ADD=( [all]="tests/test_network_sensor.py::test_tcp_connection_gives_connect_accept_and_close_with_owner_tuple_and_bytes"
                      [bullseye]="tests/test_enforcement_bpf_lsm.py::test_a_transaction_failing_at_its_last_attach_never_blocked_an_open_nor_reported_one" )

mkdir -p "$VM/logs"
declare -A pids logs
# Each kernel's job gets its own process group (job control), so an interrupted lane can stop its
# guests -- and only its own -- by group id.
set -m
stop_guests() {
    for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
}
trap 'log "interrupted: stopping the guests"; stop_guests; exit 130' INT TERM
for k in "${kernels[@]}"; do
    logs[$k]="$VM/logs/lane-$k.log"
    # Probes are built here with the host's clang against the guest's BTF (cache hits in the guest),
    # then the guest boots. run.sh pipes QEMU's output through cat; the shell writes the log file.
    (
        kroot="$(readlink -f "$VM/kernels/$k")"
        if [[ -s "$kroot/vmlinux.btf" ]]; then
            "$ROOT/.venv/bin/python" "$ROOT/scripts/vm/prebuild.py" "$kroot/vmlinux.btf" \
                "$VM/cache/$(basename "$kroot")" 2>&1 | grep '^prebuild:' || true
        fi
        kargs=("${args[@]}")
        if ((default_selection)); then
            kargs=()
            for a in "${args[@]}"; do
                [[ " ${LANE_DROP[all]} ${LANE_DROP[$k]:-} " == *" $a "* ]] || kargs+=("$a")
            done
            for a in ${LANE_ADD[all]} ${LANE_ADD[$k]:-}; do kargs+=("$a"); done
        fi
        exec bash "$ROOT/scripts/vm/run.sh" "$k" -ra --durations=25 "${kargs[@]}"
    ) > "${logs[$k]}" 2>&1 &
    pids[$k]=$!
    log "started $k (pid ${pids[$k]}), log ${logs[$k]#$ROOT/}"
done

rc=0
summary=()
for k in "${kernels[@]}"; do
    wait "${pids[$k]}"; krc=$?
    echo "================================ VM lane: $k ================================"
    cat "${logs[$k]}"
    # The closing pytest line, e.g. "3 passed, 1 skipped in 20.1s" (possibly framed by '=').
    closing="$(grep -E '(passed|failed|error|skipped|no tests ran|deselected).* in [0-9.]+s' "${logs[$k]}" | tail -1 | sed -E 's/^=+ //; s/ =+$//')"
    passed="$(sed -nE 's/.*\b([0-9]+) passed.*/\1/p' <<< "$closing")"
    if ((krc == 5)); then
        log "$k: pytest collected no tests"; rc=1
    elif ((krc != 0)); then
        log "$k: FAILED (exit $krc)"; rc=1
    elif [[ -z "$passed" || "$passed" == 0 ]]; then
        log "$k: nothing passed ($closing): the lane ran no test"; rc=1
    fi
    summary+=("$k: exit $krc; ${closing:-no pytest summary}")
done
log "lane took $(( $(date +%s) - started ))s"
for s in "${summary[@]}"; do log "$s"; done
exit "$rc"
