#!/usr/bin/env bash
# Benchmark: REGISTER with digest auth (REGISTER -> 401 -> REGISTER with credentials -> 200)
# at increasing rates against a release outpostd on 127.0.0.1. Not run by CI.
#
#   bench/register.sh                 # 10,000 extensions, rates 500 1000 2000 4000 8000 16000
#   EXTENSIONS=2000 RATES="1000 2000" STEP_SECS=5 bench/register.sh
#
# outpostd runs on CPU 0 and SIPp on CPU 1 (taskset). Prints one row per step and the
# highest offered rate with < 0.1 % failed registrations, then outpostd's RSS with every
# extension registered.
source "$(dirname "$0")/lib.sh"

EXTENSIONS=${EXTENSIONS:-10000}
RATES=${RATES:-"500 1000 2000 4000 8000 16000"}
FIRST_EXT=100000

build_release
start_daemon

echo "bench: importing $EXTENSIONS extensions"
csv=$WORK/extensions.csv
users=$WORK/users.csv
echo "SEQUENTIAL" >"$users"
awk -v n="$EXTENSIONS" -v first="$FIRST_EXT" -v csv="$csv" -v users="$users" 'BEGIN {
    for (i = 0; i < n; i++) {
        ext = first + i
        pw = "bench-pw-" ext
        print ext "," pw > csv
        print ext ";[authentication username=" ext " password=" pw "]" >> users
    }
}'
ctl ext import "$csv" >/dev/null

echo "bench: registering all $EXTENSIONS extensions once (1000/s)"
print_header
run_step fill 1000 "$EXTENSIONS" -sf "$BENCH/register.xml" -inf "$users" || true
registered=$(ctl --json reg list | grep -o '"ext"' | wc -l)
echo "bench: $registered contacts registered"
# Non-INVITE server transactions live 32 s (Timer J) after their final response.
sleep 35
RSS_FILLED=$(rss_kib)
echo "bench: outpostd VmRSS with $registered registered extensions, after 35 s idle: $RSS_FILLED KiB"

echo
echo "bench: REGISTER rate steps of ${STEP_SECS} s"
print_header
for rate in $RATES; do
    run_step register "$rate" $((rate * STEP_SECS)) -sf "$BENCH/register.xml" -inf "$users" || break
done

echo
echo "register: highest rate with < 0.1 % failures: $BEST_RATE/s"
echo "register: outpostd VmRSS with $registered registered extensions (idle, before the rate steps): $RSS_FILLED KiB"
echo "register: outpostd VmRSS after the rate steps (peak transaction state, not returned to the OS): $(rss_kib) KiB"
