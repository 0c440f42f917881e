#!/usr/bin/env bash
# Benchmark: what kernel enforcement costs the call rate with media anchored. Not run by CI.
# Runs bench/calls.sh's scenario (INVITE auth, media anchored, HOLD_MS hold) with
# `firewall.enforce = "auto"` (on, as root) and `"off"`, alternating ROUNDS times (on off on
# off ...), each round a fresh daemon and the same rate steps. Per step it prints the
# calls.sh row plus the daemon's CPU including the nft processes it started and reaped
# (cutime/cstime), that CPU per call, and the nft processes started per second (`fw status`
# `nft_processes`; runner.rs is the only place that starts them).
#
#   bench/enforcement.sh                          # 2 rounds each, rates 1000 2000 3000
#   ROUNDS=3 RATES="1500 2500" STEP_SECS=10 bench/enforcement.sh
#
# outpostd runs on CPU 0 and SIPp on CPU 1 (taskset); the enforcer pins itself off CPU 0.
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-2}
PAIRS=${PAIRS:-500}
RATES=${RATES:-"1000 2000 3000"}
HOLD_MS=${HOLD_MS:-500}
UAS_PORT=$((SIP_PORT + 1))
UAC_PORT=$((SIP_PORT + 2))
FIRST_CALLER=200000
FIRST_CALLEE=300000

[ "$(id -u)" = 0 ] || {
    echo "bench: run as root (kernel enforcement needs CAP_NET_ADMIN)" >&2
    exit 1
}
build_release

# The relay's ports: MEDIA_PORTS (default 28000-31999, below the ephemeral range and apart
# from calls.sh's 16000-27999, so both can run on one machine).
MEDIA_FIRST=${MEDIA_FIRST:-28000}
MEDIA_LAST=${MEDIA_LAST:-31999}
# (bench/lib.sh keeps the appliance's default sip.max_server_transactions: answered
# transactions no longer count against it; MAX_SERVER_TX=700000 for builds before that.)
eval "$(declare -f start_daemon | sed "s/port_first = 16000/port_first = $MEDIA_FIRST/; s/port_last = 27999/port_last = $MEDIA_LAST/")"

write_pairs

# all_ticks: utime + stime + cutime + cstime of outpostd (its reaped children included).
all_ticks() {
    sed 's/^.*) //' "/proc/$DAEMON_PID/stat" | awk '{print $12 + $13 + $14 + $15}'
}

# nft_started: nft processes the daemon started so far (0 without kernel enforcement).
nft_started() {
    ctl --json fw status 2>/dev/null | tr ',{' '\n\n' | awk -F: '/"nft_processes"/ {print $2; found=1} END {if (!found) print 0}'
}

stop_daemon() {
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=""
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BG_PIDS=()
}

# round MODE N: a fresh daemon with enforce=MODE, callees registered, the rate steps.
round() {
    local mode=$1 n=$2
    rm -rf "$WORK/data"
    FW_ENFORCE=$mode start_daemon >/dev/null
    ctl ext import "$csv" >/dev/null
    run_step "reg-$mode-$n" 500 "$PAIRS" -sf "$BENCH/register.xml" -inf "$callees" \
        -p "$UAS_PORT" >/dev/null || true
    local steps
    steps=$(echo "$RATES" | wc -w)
    (cd "$WORK" && exec taskset -c 1 sipp -sf "$BENCH/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" \
        -t u1 -nostdin -timeout "$((steps * (STEP_SECS * 3 + 20) + 60))s" \
        -max_recv_loops 10000 >"$WORK/uas-$mode-$n.log" 2>&1) &
    BG_PIDS+=($!)
    sleep 1
    local rate a0 a1 p0 p1 t0 t1 row
    TAIL_MS=$HOLD_MS
    for rate in $RATES; do
        a0=$(all_ticks)
        p0=$(nft_started)
        t0=$(date +%s.%N)
        row=$(run_step "calls-$mode-$n" "$rate" $((rate * STEP_SECS)) -sf "$BENCH/uac_call.xml" \
            -inf "$callers" -p "$UAC_PORT" -d "$HOLD_MS" \
            -auth_uri "$FIRST_CALLEE@127.0.0.1:$SIP_PORT") || true
        t1=$(date +%s.%N)
        a1=$(all_ticks)
        p1=$(nft_started)
        # row: offered achieved calls failed failed% cpu%; add cpu incl. children, CPU ms per
        # call, nft processes per second.
        echo "$row" | awk -v m="$mode" -v n="$n" -v a0="$a0" -v a1="$a1" -v p0="$p0" -v p1="$p1" \
            -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" '{
            el = t1 - t0; if (el <= 0) el = 0.001
            cpu = 100 * (a1 - a0) / hz / el
            ms = ($3 > 0) ? 1000 * (a1 - a0) / hz / $3 : 0
            printf "%-4s %-2s %s %-10.1f %-10.3f %-8.1f\n", m, n, $0, cpu, ms, (p1 - p0) / el
        }'
    done
    stop_daemon
}

echo "bench: $ROUNDS rounds of enforce=auto/off, rates $RATES, ${STEP_SECS} s steps, hold ${HOLD_MS} ms"
printf '%-4s %-2s ' mode n
print_header | tr -d '\n'
printf ' %-10s %-10s %-8s\n' "cpu%+nft" "ms/call" "nft/s"
for n in $(seq 1 "$ROUNDS"); do
    round auto "$n"
    round off "$n"
done
