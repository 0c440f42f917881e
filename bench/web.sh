#!/usr/bin/env bash
# The web admin page's server time: the extensions page with N extensions (default 1,000;
# issue 19's goal is under 100 ms), the dashboard, the call records and the firewall page,
# each fetched REQS times (default 50) over one HTTPS keep-alive connection by curl. Prints
# the median and 95th percentile of the box's own time (the Server-Timing header: handler
# plus the admin commands it sent) and of curl's total time per request.
#
#   bench/web.sh            # release build of the host; EXTS=5000 REQS=100 bench/web.sh
#
# Runs on 127.0.0.1 only; every loop is bounded by REQS.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EXTS=${EXTS:-1000}
REQS=${REQS:-50}
PORT=${WEB_PORT:-18443}
SIP_PORT=${SIP_PORT:-15060}
WORK=$(mktemp -d /tmp/outpost-webbench.XXXXXX)
PID=""
cleanup() {
    [ -z "$PID" ] || { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT
command -v curl >/dev/null || { echo "bench: curl is missing (apt-get install -y curl)" >&2; exit 1; }

echo "bench: cargo build --release -p firmware --bins"
(cd "$ROOT" && cargo build --release -p firmware --bins)
OUTPOSTD=$TARGET_DIR/release/outpostd
OUTPOSTCTL=$TARGET_DIR/release/outpostctl
mkdir -p "$WORK/data"
cat >"$WORK/outpost.toml" <<TOML
[sip]
listen = ["127.0.0.1:$SIP_PORT"]

[store]
data_dir = "$WORK/data"

[admin]
socket = "$WORK/data/outpostd.sock"

[demo]
extensions = []

[time]
servers = []

[web]
listen = ["127.0.0.1:$PORT"]
TOML
"$OUTPOSTD" --config "$WORK/outpost.toml" >"$WORK/outpostd.log" 2>&1 &
PID=$!
export OUTPOST_SOCKET=$WORK/data/outpostd.sock
for _ in $(seq 1 100); do [ -S "$OUTPOST_SOCKET" ] && break; sleep 0.1; done
echo "bench-admin-password" | "$OUTPOSTCTL" admin passwd >/dev/null
awk -v n="$EXTS" 'BEGIN { for (i = 0; i < n; i++) printf "%d,bench-pw-%d,Colleague number %d\n", 10000 + i, 10000 + i, i }' >"$WORK/ext.csv"
"$OUTPOSTCTL" ext import "$WORK/ext.csv" >/dev/null
echo "bench: $EXTS extensions, $REQS requests per page"

JAR=$WORK/cookies
curl -sk -c "$JAR" -o /dev/null -d 'password=bench-admin-password' "https://127.0.0.1:$PORT/login"
stats() { # stats FILE: median and p95 of one number per line
    sort -g "$1" | awk '{ v[NR] = $1 } END { m = v[int((NR + 1) / 2)]; p = v[int(NR * 0.95 + 0.5)]; printf "%8.2f %8.2f", m, p }'
}
printf "%-12s %10s %9s %9s %9s %9s\n" page bytes "box med" "box p95" "curl med" "curl p95"
for page in /extensions / /calls /firewall; do
    : >"$WORK/box" ; : >"$WORK/total"
    args=()
    for _ in $(seq 1 "$REQS"); do args+=(-o /dev/null "https://127.0.0.1:$PORT$page"); done
    # One curl, one connection: REQS requests in sequence; headers to a file, timing per request.
    curl -sk -b "$JAR" -D "$WORK/headers" -w '%{http_code} %{time_total} %{size_download}\n' "${args[@]}" >"$WORK/curl"
    bad=$(awk '$1 != 200' "$WORK/curl" | head -1)
    [ -z "$bad" ] || { echo "bench: $page answered $bad" >&2; exit 1; }
    grep -i '^server-timing:' "$WORK/headers" | sed 's/.*dur=//' | tr -d '\r' >"$WORK/box"
    awk '{ print $2 * 1000 }' "$WORK/curl" >"$WORK/total"
    bytes=$(tail -1 "$WORK/curl" | awk '{ print $3 }')
    printf "%-12s %10s %s %s\n" "$page" "$bytes" "$(stats "$WORK/box")" "$(stats "$WORK/total")"
done
echo "(ms; box = Server-Timing, the daemon's time; curl = request sent to last byte)"
