#!/usr/bin/env bash
# Benchmark: B2BUA call setups through a release outpostd on 127.0.0.1. Not run by CI.
# A SIPp UAS registers PAIRS callee extensions from one port and answers every INVITE the
# PBX sends there; a SIPp UAC calls them: INVITE -> 407 -> INVITE with credentials ->
# 100/180 -> 200 -> ACK -> (HOLD_MS) -> BYE -> 200, at increasing rates.
#
#   bench/calls.sh                    # 500 caller/callee pairs, rates 100 200 400 800 1600 3200
#   PAIRS=100 RATES="100 200" STEP_SECS=5 HOLD_MS=200 bench/calls.sh
#
# outpostd runs on CPU 0 and both SIPp processes on CPU 1 (taskset).
source "$(dirname "$0")/lib.sh"

PAIRS=${PAIRS:-500}
RATES=${RATES:-"100 200 400 800 1600 3200"}
HOLD_MS=${HOLD_MS:-500}
UAS_PORT=$((SIP_PORT + 1))
UAC_PORT=$((SIP_PORT + 2))
FIRST_CALLER=200000
FIRST_CALLEE=300000

build_release
start_daemon

write_pairs
echo "bench: importing $((PAIRS * 2)) extensions"
ctl ext import "$csv" >/dev/null

echo "bench: registering $PAIRS callees from 127.0.0.1:$UAS_PORT"
print_header
run_step callee-register 500 "$PAIRS" -sf "$BENCH/register.xml" -inf "$callees" -p "$UAS_PORT" || true

steps=$(echo "$RATES" | wc -w)
(cd "$WORK" && exec taskset -c 1 sipp -sf "$BENCH/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" -t u1 -nostdin \
    -timeout "$((steps * (STEP_SECS * 3 + 20) + 60))s" -max_recv_loops 10000 \
    -trace_err -error_file "$WORK/uas-errors.log" >"$WORK/uas-screen.log" 2>&1) &
BG_PIDS+=($!)
sleep 1

echo
echo "bench: call rate steps of ${STEP_SECS} s, calls held ${HOLD_MS} ms"
print_header
TAIL_MS=$HOLD_MS
# ctx_switches [THREAD-NAME]: voluntary + involuntary context switches of outpostd's threads
# (all of them, or those whose name starts with THREAD-NAME).
ctx_switches() {
    local total=0 task n
    for task in /proc/"$DAEMON_PID"/task/*; do
        if [ -n "${1:-}" ] && [[ "$(cat "$task/comm" 2>/dev/null)" != "$1"* ]]; then
            continue
        fi
        n=$(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$task/status" 2>/dev/null || echo 0)
        total=$((total + n))
    done
    echo "$total"
}
for rate in $RATES; do
    cs0=$(ctx_switches)
    rs0=$(ctx_switches rtp-relay)
    ok0=0
    run_step calls "$rate" $((rate * STEP_SECS)) -sf "$BENCH/uac_call.xml" -inf "$callers" \
        -p "$UAC_PORT" -d "$HOLD_MS" -auth_uri "$FIRST_CALLEE@127.0.0.1:$SIP_PORT" && go=1 || go=0
    cs1=$(ctx_switches)
    rs1=$(ctx_switches rtp-relay)
    ok=$(csv_last "$WORK/calls-$rate/stats.csv" "SuccessfulCall(C)")
    awk -v a="$((cs1 - cs0))" -v r="$((rs1 - rs0))" -v ok="$ok" -v ok0="$ok0" 'BEGIN {
        n = ok - ok0; if (n <= 0) n = 1
        printf "           context switches per call: %.1f (relay thread %.1f)\n", a / n, r / n }'
    [ "$go" = 1 ] || break
done

echo
echo "calls: highest call rate with < 0.1 % failures: $BEST_RATE/s"
echo "calls: outpostd VmRSS: $(rss_kib) KiB"
