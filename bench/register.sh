#!/usr/bin/env bash
# Benchmark: REGISTER with digest auth (REGISTER -> 401 -> REGISTER with credentials -> 200)
# at increasing rates against a release outpostd on 127.0.0.1. Not run by CI.
#
#   bench/register.sh                 # 10,000 extensions, rates 500 1000 2000 4000 8000 16000
#   EXTENSIONS=2000 RATES="1000 2000" STEP_SECS=5 bench/register.sh
#   TARGET=x86_64-unknown-linux-musl bench/register.sh      # the static musl build
#   BUILDS="host x86_64-unknown-linux-musl" ROUNDS=2 RATES="6000 12000" bench/register.sh
#   BUILDS="old=/tmp/outpostd-old new=target/release/outpostd" ROUNDS=2 bench/register.sh
#
# outpostd runs on CPU 0 and SIPp on CPU 1 (taskset). Prints one row per step and the
# highest offered rate with < 0.1 % failures, then outpostd's RSS with every extension
# registered. With BUILDS (each "host", a target triple, or LABEL=/path/to/outpostd) every
# build runs the whole sequence in turn, ROUNDS times (A B A B), on a fresh data
# directory, and a summary compares them.
source "$(dirname "$0")/lib.sh"

EXTENSIONS=${EXTENSIONS:-10000}
RATES=${RATES:-"500 1000 2000 4000 8000 16000"}
ROUNDS=${ROUNDS:-1}
# Seconds idle before the RSS reading (Timer J: transactions live 32 s after their 200).
RSS_WAIT=${RSS_WAIT:-35}
FIRST_EXT=100000

# Each build: "label binary".
declare -a LABELS=() BINARIES=() TARGETS=()
if [ -n "${BUILDS:-}" ]; then
    for b in $BUILDS; do
        case "$b" in
            *=*) LABELS+=("${b%%=*}"); BINARIES+=("${b#*=}") ;;
            host) LABELS+=(host); BINARIES+=("$(release_dir "")/outpostd") ;;
            *) LABELS+=("$b"); BINARIES+=("$(release_dir "$b")/outpostd"); TARGETS+=("$b") ;;
        esac
    done
else
    LABELS=("${TARGET:-host}")
    BINARIES=("$OUTPOSTD")
    [ -z "$TARGET" ] || TARGETS=("$TARGET")
fi
# NO_BUILD=1: run the binaries as they are (an A/B of kept builds).
if [ -z "${NO_BUILD:-}" ]; then
    build_release "${TARGETS[@]}"
else
    need sipp sip-tester
    need taskset util-linux
fi

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

SUMMARY=$WORK/summary.txt
: >"$SUMMARY"

# shed_count: requests outpostd shed as stale so far (0 for builds without the counter).
shed_count() {
    ctl --json metrics 2>/dev/null | grep -o '"sip_shed_stale": *[0-9]*' | grep -o '[0-9]*$' || echo 0
}

# one_build LABEL BINARY ROUND: the whole sequence against one daemon.
one_build() {
    local label=$1 binary=$2 round=$3
    echo
    echo "=== $label (round $round): $binary"
    start_daemon "$binary"
    echo "bench: importing $EXTENSIONS extensions"
    ctl ext import "$csv" >/dev/null
    echo "bench: registering all $EXTENSIONS extensions once (1000/s)"
    print_header
    run_step fill 1000 "$EXTENSIONS" -sf "$BENCH/register.xml" -inf "$users" || true
    local registered rss_filled
    registered=$(ctl --json reg list | grep -o '"ext"' | wc -l)
    echo "bench: $registered contacts registered"
    sleep "$RSS_WAIT"
    rss_filled=$(rss_kib)
    echo "bench: outpostd VmRSS with $registered registered extensions, after $RSS_WAIT s idle: $rss_filled KiB"
    echo
    echo "bench: REGISTER rate steps of ${STEP_SECS} s"
    print_header
    BEST_RATE=0
    local rate
    for rate in $RATES; do
        local go=yes shed0 shed1
        shed0=$(shed_count)
        run_step register "$rate" $((rate * STEP_SECS)) -sf "$BENCH/register.xml" -inf "$users" || go=no
        shed1=$(shed_count)
        printf '%-28s %-6s %s %s\n' "$label" "$round" "$STEP_ROW" $((shed1 - shed0)) >>"$SUMMARY"
        [ "$go" = yes ] || break
    done
    echo
    echo "register: $label: highest rate with < 0.1 % failures: $BEST_RATE/s"
    echo "register: $label: outpostd VmRSS with $registered registered extensions (idle, before the rate steps): $rss_filled KiB"
    echo "register: $label: outpostd VmRSS after the rate steps: $(rss_kib) KiB, peak (VmHWM): $(hwm_kib) KiB"
    printf '%-28s %-6s best %s/s, VmRSS filled %s KiB, after %s KiB, peak %s KiB\n' "$label" "$round" \
        "$BEST_RATE" "$rss_filled" "$(rss_kib)" "$(hwm_kib)" >>"$SUMMARY"
    stop_daemon
}

for round in $(seq 1 "$ROUNDS"); do
    for i in "${!LABELS[@]}"; do
        one_build "${LABELS[$i]}" "${BINARIES[$i]}" "$round"
    done
done

echo
echo "=== summary (rows: build, round, then offered achieved calls failed failed% cpu% cpu-us/ok retrans shed)"
cat "$SUMMARY"
