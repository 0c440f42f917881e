# Shared helpers for bench/register.sh and bench/calls.sh (sourced, not run).
# Everything runs on 127.0.0.1; every loop is bounded in count, and every SIPp run by -m
# and -timeout.
#
# TARGET=x86_64-unknown-linux-musl builds and runs that target (the firmware as shipped is a
# static musl build); unset, the host's default (glibc) build. OUTPOSTD=/path runs that
# binary instead of building one (an older build kept for an A/B comparison).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TARGET=${TARGET:-}
# release_dir TARGET: where cargo puts that target's release binaries ("" = the host's).
release_dir() {
    if [ -n "$1" ]; then echo "$TARGET_DIR/$1/release"; else echo "$TARGET_DIR/release"; fi
}
# OUTPOSTD=/path/to/outpostd runs that build instead (e.g. the previous commit's, to
# compare; nothing is built then).
GIVEN_OUTPOSTD=${OUTPOSTD:-}
OUTPOSTD=${OUTPOSTD:-$(release_dir "$TARGET")/outpostd}
# outpostctl only talks to the admin socket: the host build serves every daemon.
OUTPOSTCTL=$TARGET_DIR/release/outpostctl
SIP_PORT=${SIP_PORT:-15060}
STEP_SECS=${STEP_SECS:-10}
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/outpost-bench.XXXXXX)
DAEMON_PID=""
BG_PIDS=()

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "bench: $1 is missing (apt-get install -y $2)" >&2
        exit 1
    }
}

cleanup() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    unlimit_daemon_cpu
    if [ -z "${KEEP_BENCH_DIR:-}" ]; then
        rm -rf "$WORK"
    else
        echo "bench: files kept in $WORK"
    fi
}
trap cleanup EXIT

# build_release [TARGET...]: the host's release binaries, and outpostd for each TARGET
# (default: $TARGET). Static musl builds link with rust-lld; C (ring) is built by clang.
build_release() {
    need sipp sip-tester
    need taskset util-linux
    if [ -n "$GIVEN_OUTPOSTD" ]; then
        echo "bench: running $OUTPOSTD (not built)"
        return 0
    fi
    echo "bench: cargo build --release -p firmware --bins"
    (cd "$ROOT" && cargo build --release -p firmware --bins)
    local t targets=("$@")
    [ ${#targets[@]} -gt 0 ] || targets=("$TARGET")
    for t in "${targets[@]}"; do
        [ -n "$t" ] || continue
        # mimalloc's C needs musl's headers for a musl target (.cargo/config.toml [env]).
        if [[ "$t" == x86_64-*-musl ]] && [ ! -f /usr/include/x86_64-linux-musl/stdlib.h ]; then
            echo "bench: apt-get install -y musl-dev (musl's headers, for mimalloc)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-dev >/dev/null
        fi
        echo "bench: cargo build --release --target $t -p firmware --bin outpostd"
        (cd "$ROOT" && cargo build --release --target "$t" -p firmware --bin outpostd)
    done
}

# write_pairs: PAIRS caller extensions from FIRST_CALLER and callee extensions from
# FIRST_CALLEE, with their SIPp injection files: $WORK/extensions.csv (for `ext import`),
# $WORK/callees.csv (the callees' registrations) and $WORK/callers.csv (caller, credentials,
# whom to call). SIPp 3.6 computes the digest uri as sip:REMOTE_IP:REMOTE_PORT whatever the
# Request-URI, which outpostd refuses for an INVITE (400 Digest URI Does Not Match
# Request-URI, RFC 7616 3.4.6); -auth_uri fixes it for one target only, so every caller calls
# the first callee (the SIPp UAS registered for all of them answers every INVITE it gets):
# pass `-auth_uri "$FIRST_CALLEE@127.0.0.1:$SIP_PORT"` to the callers' SIPp.
write_pairs() {
    csv=$WORK/extensions.csv
    callees=$WORK/callees.csv
    callers=$WORK/callers.csv
    echo "SEQUENTIAL" >"$callees"
    echo "SEQUENTIAL" >"$callers"
    awk -v n="$PAIRS" -v a="$FIRST_CALLER" -v b="$FIRST_CALLEE" -v csv="$csv" \
        -v callees="$callees" -v callers="$callers" 'BEGIN {
        for (i = 0; i < n; i++) {
            caller = a + i; callee = b + i
            print caller ",bench-pw-" caller > csv
            print callee ",bench-pw-" callee > csv
            print callee ";[authentication username=" callee " password=bench-pw-" callee "]" >> callees
            print caller ";[authentication username=" caller " password=bench-pw-" caller "];" b >> callers
        }
    }'
}

# stop_daemon: SIGTERM and wait (the next start_daemon may use the same port and data).
stop_daemon() {
    if [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
        DAEMON_PID=""
    fi
    unlimit_daemon_cpu
}

# DAEMON_CPU_PCT=N: outpostd gets at most N % of one core (a CPU quota in a cgroup of its
# own, 10 ms period): a slower box, for overload steps on a machine where SIPp cannot offer
# twice what a whole core of outpostd takes.
DAEMON_CPU_PCT=${DAEMON_CPU_PCT:-}
CPU_CGROUP=""
limit_daemon_cpu() {
    [ -n "$DAEMON_CPU_PCT" ] || return 0
    if [ -w /sys/fs/cgroup/cpu ]; then
        # cgroup v1
        CPU_CGROUP=/sys/fs/cgroup/cpu/outpost-bench-$$
        mkdir -p "$CPU_CGROUP"
        echo 10000 >"$CPU_CGROUP/cpu.cfs_period_us"
        echo $((DAEMON_CPU_PCT * 100)) >"$CPU_CGROUP/cpu.cfs_quota_us"
    elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        CPU_CGROUP=/sys/fs/cgroup/outpost-bench-$$
        mkdir -p "$CPU_CGROUP"
        echo "$((DAEMON_CPU_PCT * 100)) 10000" >"$CPU_CGROUP/cpu.max"
    else
        echo "bench: DAEMON_CPU_PCT needs a cgroup cpu controller (/sys/fs/cgroup)" >&2
        exit 1
    fi
    echo "$DAEMON_PID" >"$CPU_CGROUP/cgroup.procs"
    echo "bench: outpostd limited to $DAEMON_CPU_PCT % of a core ($CPU_CGROUP)"
}

# unlimit_daemon_cpu: removes the quota's cgroup, once empty (outpostd's nft children may
# exit a moment after it; up to 5 s).
unlimit_daemon_cpu() {
    if [ -n "$CPU_CGROUP" ]; then
        local i
        for i in $(seq 1 50); do
            rmdir "$CPU_CGROUP" 2>/dev/null && break
            sleep 0.1
        done
        [ ! -d "$CPU_CGROUP" ] || echo "bench: could not remove $CPU_CGROUP" >&2
        CPU_CGROUP=""
    fi
}

# start_daemon [BINARY]: release outpostd (default $OUTPOSTD) pinned to CPU 0 with a bench
# config and an empty data directory in $WORK.
start_daemon() {
    local binary=${1:-$OUTPOSTD}
    rm -rf "$WORK/data"
    mkdir -p "$WORK/data"
    # The appliance's default transaction cap unless MAX_SERVER_TX is set: builds before
    # the completed-transaction cache (issue 18) held every answered transaction 32 s
    # against it and need ~32 x the rate to be measured at all.
    local cap_line=""
    [ -z "${MAX_SERVER_TX:-}" ] || cap_line="max_server_transactions = $MAX_SERVER_TX"
    cat >"$WORK/outpost.toml" <<TOML
[sip]
listen = ["127.0.0.1:$SIP_PORT"]
realm = "outpost"
$cap_line

[registrar]
min_expires = 60
max_expires = 7200
default_expires = 3600

[auth]
# SIPp 3.6 answers only the first challenge and knows only MD5.
algorithms = ["MD5", "SHA-256"]

[calls]
ring_timeout_secs = 60

[store]
data_dir = "$WORK/data"

[admin]
socket = "$WORK/admin.sock"

[media]
# Room for ~3,000 concurrent anchored calls (two port pairs each), below the
# ephemeral range and above the bench SIP ports (RELAY_FIRST, RELAY_LAST: another range
# when another program holds ports there).
port_first = ${RELAY_FIRST:-16000}
port_last = ${RELAY_LAST:-27999}

[firewall]
# auto = the appliance's setting (nftables when root); FW_ENFORCE=off to compare.
enforce = "${FW_ENFORCE:-auto}"

[time]
# No NTP (nothing outside 127.0.0.1 is asked during a bench).
servers = []

[log]
level = "warn"

[demo]
extensions = []
TOML
    taskset -c 0 "$binary" --config "$WORK/outpost.toml" 2>"$WORK/outpostd.log" &
    DAEMON_PID=$!
    limit_daemon_cpu
    local i
    for i in $(seq 1 100); do
        if ctl status >/dev/null 2>&1; then
            # A part of the bench config it could not use (a relay port taken by another
            # program) would make it run on built-in defaults: figures of another setup.
            if grep -q "running with the built-in default" "$WORK/outpostd.log"; then
                echo "bench: outpostd could not use the bench configuration:" >&2
                grep "built-in default" "$WORK/outpostd.log" >&2
                exit 1
            fi
            echo "bench: $binary pid $DAEMON_PID on 127.0.0.1:$SIP_PORT (CPU 0)"
            return 0
        fi
        sleep 0.1
    done
    echo "bench: outpostd did not start:" >&2
    cat "$WORK/outpostd.log" >&2
    exit 1
}

ctl() {
    "$OUTPOSTCTL" --socket "$WORK/admin.sock" "$@"
}

# cpu_ticks: utime + stime of outpostd, in clock ticks.
cpu_ticks() {
    # Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    local stat
    stat=$(sed 's/^.*) //' "/proc/$DAEMON_PID/stat")
    echo "$stat" | awk '{print $12 + $13}'
}

rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON_PID/status"
}

# hwm_kib: outpostd's peak resident memory so far (VmHWM), in KiB.
hwm_kib() {
    awk '/^VmHWM:/ {print $2}' "/proc/$DAEMON_PID/status"
}

# csv_last FILE COLUMN: the value of COLUMN in the last line of a SIPp -trace_stat CSV.
csv_last() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $c }
        END { print (last == "" ? 0 : last) }' "$1"
}

BEST_RATE=0
print_header() {
    printf '%-10s %-10s %-10s %-10s %-10s %-9s %-9s %-9s\n' offered achieved calls failed "failed%" "cpu%" "cpu-us/ok" retrans
}

# run_step NAME RATE COUNT SIPP-ARGS...: one SIPp run on CPU 1; prints a row and updates
# BEST_RATE (and STEP_ROW, the row printed). Returns 1 when the step is bad enough to stop
# escalating.
run_step() {
    local name=$1 rate=$2 count=$3
    shift 3
    local dir="$WORK/$name-$rate"
    rm -rf "$dir"
    mkdir -p "$dir"
    local t0 t1 c0 c1
    c0=$(cpu_ticks)
    t0=$(date +%s.%N)
    (cd "$dir" && taskset -c 1 sipp 127.0.0.1:"$SIP_PORT" -i 127.0.0.1 -t u1 -nostdin \
        -r "$rate" -m "$count" -l $((rate * 4 + 100)) \
        -timeout "$((STEP_SECS * 3 + 20))s" -timeout_error -max_recv_loops 10000 \
        -trace_stat -stf "$dir/stats.csv" -fd 1 \
        -trace_err -error_file "$dir/errors.log" \
        "$@" >"$dir/screen.log" 2>&1) || true
    t1=$(date +%s.%N)
    c1=$(cpu_ticks)
    local ok failed retrans row verdict
    ok=$(csv_last "$dir/stats.csv" "SuccessfulCall(C)")
    failed=$(csv_last "$dir/stats.csv" "FailedCall(C)")
    # Messages SIPp sent again for want of an answer (Timer A/E): the overload's symptom.
    retrans=$(csv_last "$dir/stats.csv" "Retransmissions(C)")
    # awk does the floating point: offered, achieved, calls, failed, failed%, cpu%; then
    # "best" when failures < 0.1 %, "stop" when saturated (>= 5 % failed or < 70 % achieved).
    row=$(awk -v r="$rate" -v ok="$ok" -v f="$failed" -v t0="$t0" -v t1="$t1" \
        -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" -v tail="${TAIL_MS:-0}" -v rt="$retrans" 'BEGIN {
            el = t1 - t0
            # Achieved rate over the sending window: the last call still takes its own
            # duration (TAIL_MS, e.g. the hold time) after it was offered.
            if (el - tail / 1000 > 0.5 * el) el = el - tail / 1000
            if (el <= 0) el = 0.001
            ach = ok / el
            pct = (ok + f > 0) ? 100 * f / (ok + f) : 100
            cpu = 100 * (c1 - c0) / hz / el
            # CPU time per successful registration/call, in microseconds.
            us = (ok > 0) ? 1e6 * (c1 - c0) / hz / ok : 0
            printf "%-10s %-10.0f %-10s %-10s %-10.3f %-9.1f %-9.1f %-9s", r, ach, ok, f, pct, cpu, us, rt
            # A step counts only when SIPp really delivered the offered rate.
            v = (pct < 0.1 && ok > 0 && ach >= 0.95 * r) ? "best" : "-"
            v = v ((pct >= 5 || ach < 0.7 * r) ? " stop" : " go")
            printf "|%s|%.0f\n", v, ach
        }')
    local rest=${row#*|}
    verdict=${rest%%|*}
    STEP_ROW=${row%%|*}
    echo "$STEP_ROW"
    if [[ "$verdict" == best* ]]; then
        BEST_RATE=${rest##*|}
    fi
    [[ "$verdict" != *stop ]]
}
