#!/usr/bin/env bash
# Benchmark: Outpost side by side with its peers, Debian's Kamailio (registrar, stateful
# proxy) and Kamailio + rtpengine (media anchored), with the same SIPp scenarios on the same
# pinning (server on CPU 0, SIPp on CPU 1), one after the other, ROUNDS times (O K O K).
# Installs kamailio and rtpengine-daemon when missing (their services are not started).
# Run on demand; never by CI.
#
#   bench/peers.sh                                   # register and calls, 2 rounds
#   PARTS=register REG_RATES="8000 12000 16000 20000" bench/peers.sh
#   PARTS=calls CALL_RATES="1000 2000 3000 4000" HOLD_MS=500 bench/peers.sh
#   CALL_SERVERS="outpost kamailio+rtpengine" PARTS=calls bench/peers.sh
#   PARTS=relay bench/peers.sh                       # bench/relay.sh with PEER=rtpengine
#
# Parts:
#   register  REGISTER -> 401 -> REGISTER with digest -> 200 (bench/register.xml), against
#             outpostd and against Kamailio (registrar, usrloc in memory, 4 UDP children);
#   calls     INVITE -> 407 -> INVITE with credentials -> 180 -> 200 -> ACK -> hold -> BYE
#             (bench/uac_call.xml, bench/uas.xml), against outpostd (a B2BUA anchoring the
#             media: relay ports in both SDPs), Kamailio as a stateful record-routing proxy
#             (SDP untouched: no media anchored) and Kamailio + rtpengine (offer/answer/
#             delete: media anchored, as Outpost does);
#   relay     RTP forwarding: bench/relay.sh with rtpengine (its own table).
# Kamailio's digest password for user U is "bench-pw-U", the bench's password, computed in
# its config (Outpost looks it up in its store: both are in-memory lookups).
# A row per step: server, round, offered, achieved, calls, failed, failed%, cpu%, cpu-us/ok;
# cpu is every process of the server (Kamailio's children, rtpengine) on CPU 0. At the end,
# per part: the highest clean rate of each server (mean over rounds) and the ratio
# Outpost / peer, and CPU per success at the highest rate both passed cleanly.
source "$(dirname "$0")/lib.sh"

PARTS=${PARTS:-"register calls"}
ROUNDS=${ROUNDS:-2}
REG_RATES=${REG_RATES:-"4000 8000 12000 16000 20000"}
CALL_RATES=${CALL_RATES:-"500 1000 2000 3000 4000"}
EXTENSIONS=${EXTENSIONS:-10000}
PAIRS=${PAIRS:-500}
HOLD_MS=${HOLD_MS:-500}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-4}
CALL_SERVERS=${CALL_SERVERS:-"outpost kamailio kamailio+rtpengine"}
RTPENGINE_LOG_LEVEL=${RTPENGINE_LOG_LEVEL:-3}
NG_PORT=${NG_PORT:-22298}
UAS_PORT=$((SIP_PORT + 1))
UAC_PORT=$((SIP_PORT + 2))
FIRST_CALLER=200000
FIRST_CALLEE=300000
FIRST_EXT=100000

# install_peers: Debian's kamailio and rtpengine-daemon, without starting their services
# (a policy-rc.d that refuses every start for the install's duration).
install_peers() {
    local missing=()
    command -v kamailio >/dev/null 2>&1 || missing+=(kamailio)
    command -v rtpengine >/dev/null 2>&1 || missing+=(rtpengine-daemon)
    [ ${#missing[@]} -gt 0 ] || return 0
    echo "bench: apt-get install ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d had_policy=""
    [ -e "$policy" ] && had_policy=yes
    if [ -z "$had_policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        >"$WORK/apt.log" 2>&1 || {
        cat "$WORK/apt.log" >&2
        [ -n "$had_policy" ] || rm -f "$policy"
        exit 1
    }
    [ -n "$had_policy" ] || rm -f "$policy"
}

# Every process of the server under test, for CPU and memory: SERVER_PIDS (roots) and all
# their descendants.
SERVER_PIDS=()
server_tree() {
    local p
    for p in "${SERVER_PIDS[@]}"; do
        echo "$p"
        pgrep -P "$p" 2>/dev/null || true
    done
}
# Replaces lib.sh's: utime + stime of every process of the server, in clock ticks.
cpu_ticks() {
    local total=0 p t
    for p in $(server_tree); do
        t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
# mem_kib: RSS and PSS summed over the server's processes, "RSS PSS" in KiB.
mem_kib() {
    local p rss=0 pss=0 r s
    for p in $(server_tree); do
        r=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        s=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        rss=$((rss + ${r:-0}))
        pss=$((pss + ${s:-0}))
    done
    echo "$rss $pss"
}

start_outpost() {
    start_daemon
    SERVER_PIDS=("$DAEMON_PID")
}
stop_outpost() {
    stop_daemon
    SERVER_PIDS=()
}

RTPENGINE_PID=""
KAMAILIO_PID=""
# start_kamailio [media]: Kamailio on CPU 0 with KAMAILIO_CHILDREN UDP children; with
# "media", rtpengine (user space, one media thread, also on CPU 0) and the rtpengine module.
start_kamailio() {
    local media=${1:-}
    local modules
    modules=$(dirname "$(find /usr/lib -path '*kamailio/modules/tm.so' | head -n1)")
    local defs=""
    if [ "$media" = media ]; then
        defs="#!define WITH_RTPENGINE"
        taskset -c 0 rtpengine --table=-1 --interface=127.0.0.1 \
            --listen-ng=127.0.0.1:"$NG_PORT" --port-min=30000 --port-max=39999 \
            --num-threads=1 --media-num-threads=1 --foreground --log-stderr --log-level="$RTPENGINE_LOG_LEVEL" \
            --delete-delay=0 --timeout=60 >"$WORK/rtpengine.log" 2>&1 &
        RTPENGINE_PID=$!
        BG_PIDS+=("$RTPENGINE_PID")
        sleep 1
    fi
    cat >"$WORK/kamailio.cfg" <<CFG
#!KAMAILIO
$defs
debug=-1
log_stderror=yes
children=$KAMAILIO_CHILDREN
listen=udp:127.0.0.1:$SIP_PORT
alias="127.0.0.1:$SIP_PORT"
auto_aliases=no
mpath="$modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "auth.so"
#!ifdef WITH_RTPENGINE
loadmodule "rtpengine.so"
modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:$NG_PORT")
#!endif
modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_expires", 7200)
modparam("auth", "secret", "outpost-bench")

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (is_method("REGISTER")) {
        if (!pv_www_authenticate("\$td", "bench-pw-\$au", "0")) {
            www_challenge("\$td", "0");
            exit;
        }
        if (!save("location")) {
            sl_reply_error();
        }
        exit;
    }
    if (has_totag()) {
        if (loose_route()) {
#!ifdef WITH_RTPENGINE
            if (is_method("BYE")) {
                rtpengine_delete();
            }
#!endif
            t_relay();
            exit;
        }
        if (is_method("ACK") && t_check_trans()) {
            t_relay();
        } else if (!is_method("ACK")) {
            sl_send_reply("404", "Not Here");
        }
        exit;
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    if (is_method("ACK")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    if (!is_method("INVITE")) {
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }
    if (!pv_proxy_authenticate("\$fd", "bench-pw-\$au", "0")) {
        proxy_challenge("\$fd", "0");
        exit;
    }
    consume_credentials();
    record_route();
    if (!lookup("location")) {
        sl_send_reply("404", "Not Found");
        exit;
    }
#!ifdef WITH_RTPENGINE
    rtpengine_offer("replace-origin replace-session-connection");
    t_on_reply("MEDIA");
#!endif
    t_relay();
}

#!ifdef WITH_RTPENGINE
onreply_route[MEDIA] {
    if (has_body("application/sdp")) {
        rtpengine_answer("replace-origin replace-session-connection");
    }
}
#!endif
CFG
    kamailio -c -f "$WORK/kamailio.cfg" >"$WORK/kamailio-check.log" 2>&1 || {
        echo "bench: kamailio refuses its config:" >&2
        cat "$WORK/kamailio-check.log" >&2
        exit 1
    }
    # Shared memory 512 MiB (room for 10,000 registrations and the transactions of the
    # highest rates), private 32 MiB per process.
    taskset -c 0 kamailio -f "$WORK/kamailio.cfg" -DD -E -m 512 -M 32 -w "$WORK" \
        -Y "$WORK" >"$WORK/kamailio.log" 2>&1 &
    KAMAILIO_PID=$!
    BG_PIDS+=("$KAMAILIO_PID")
    local i
    for i in $(seq 1 50); do
        local n
        n=$(pgrep -c -P "$KAMAILIO_PID" 2>/dev/null || true)
        if [ "${n:-0}" -ge "$KAMAILIO_CHILDREN" ]; then
            break
        fi
        sleep 0.1
    done
    sleep 0.5
    kill -0 "$KAMAILIO_PID" 2>/dev/null || {
        echo "bench: kamailio did not start:" >&2
        cat "$WORK/kamailio.log" >&2
        exit 1
    }
    SERVER_PIDS=("$KAMAILIO_PID")
    [ -z "$RTPENGINE_PID" ] || SERVER_PIDS+=("$RTPENGINE_PID")
    echo "bench: kamailio $(kamailio -v 2>/dev/null | awk 'NR==1 {print $3}') pid $KAMAILIO_PID" \
        "(${KAMAILIO_CHILDREN} children) on 127.0.0.1:$SIP_PORT, CPU 0${RTPENGINE_PID:+, rtpengine pid $RTPENGINE_PID}"
}
stop_kamailio() {
    local p
    for p in "$KAMAILIO_PID" "$RTPENGINE_PID"; do
        [ -n "$p" ] || continue
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    KAMAILIO_PID=""
    RTPENGINE_PID=""
    SERVER_PIDS=()
    sleep 1
}

SUMMARY=$WORK/summary.txt
: >"$SUMMARY"
# row PART SERVER ROUND: appends the last step's row to the summary.
row() {
    printf '%-9s %-18s %-3s %s\n' "$1" "$2" "$3" "$STEP_ROW" >>"$SUMMARY"
}

# register_seq SERVER ROUND
register_seq() {
    local server=$1 round=$2
    echo
    echo "=== register: $server (round $round)"
    case "$server" in
        outpost)
            start_outpost
            ctl ext import "$WORK/reg-extensions.csv" >/dev/null
            ;;
        kamailio) start_kamailio ;;
    esac
    print_header
    run_step fill 1000 "$EXTENSIONS" -sf "$BENCH/register.xml" -inf "$WORK/users.csv" || true
    sleep 2
    echo "bench: $server memory with $EXTENSIONS registered (RSS PSS KiB): $(mem_kib)"
    echo "mem $server $round $(mem_kib)" >>"$WORK/mem.txt"
    local rate
    for rate in $REG_RATES; do
        local go=yes
        run_step "register-$server" "$rate" $((rate * STEP_SECS)) -sf "$BENCH/register.xml" \
            -inf "$WORK/users.csv" || go=no
        row register "$server" "$round"
        [ "$go" = yes ] || break
    done
    echo "bench: $server memory after the steps (RSS PSS KiB): $(mem_kib)"
    case "$server" in
        outpost) stop_outpost ;;
        kamailio) stop_kamailio ;;
    esac
}

# calls_seq SERVER ROUND (SERVER: outpost, kamailio, kamailio+rtpengine)
calls_seq() {
    local server=$1 round=$2
    echo
    echo "=== calls: $server (round $round), held ${HOLD_MS} ms"
    case "$server" in
        outpost)
            start_outpost
            ctl ext import "$csv" >/dev/null
            ;;
        kamailio) start_kamailio ;;
        kamailio+rtpengine) start_kamailio media ;;
    esac
    print_header
    run_step callee-register 500 "$PAIRS" -sf "$BENCH/register.xml" -inf "$callees" \
        -p "$UAS_PORT" || true
    local steps uas
    steps=$(echo "$CALL_RATES" | wc -w)
    (cd "$WORK" && exec taskset -c 1 sipp -sf "$BENCH/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" \
        -t u1 -nostdin -timeout "$((steps * (STEP_SECS * 3 + 20) + 60))s" \
        -max_recv_loops 10000 -trace_err -error_file "$WORK/uas-errors.log" \
        >"$WORK/uas-screen.log" 2>&1) &
    uas=$!
    sleep 1
    TAIL_MS=$HOLD_MS
    local rate
    for rate in $CALL_RATES; do
        local go=yes
        run_step "calls-$server" "$rate" $((rate * STEP_SECS)) -sf "$BENCH/uac_call.xml" \
            -inf "$callers" -p "$UAC_PORT" -d "$HOLD_MS" \
            -auth_uri "$FIRST_CALLEE@127.0.0.1:$SIP_PORT" || go=no
        row calls "$server" "$round"
        [ "$go" = yes ] || break
        # Calls of the step still held or ending: let them finish before the next.
        sleep 2
    done
    TAIL_MS=0
    kill "$uas" 2>/dev/null || true
    wait "$uas" 2>/dev/null || true
    case "$server" in
        outpost) stop_outpost ;;
        *) stop_kamailio ;;
    esac
}

# ratios PART OUTPOST-SERVER PEER-SERVER: from the summary, each server's highest clean rate
# per round (mean), and CPU per success at the highest rate both passed cleanly in every round.
ratios() {
    awk -v part="$1" -v a="$2" -v b="$3" '
        $1 != part { next }
        {
            server = $2; round = $3; offered = $4; failed_pct = $8; us = $10
            clean = (failed_pct < 0.1 && $5 >= 0.95 * offered)
            if (clean && offered > best[server, round]) best[server, round] = offered
            if (clean) { ok[server, offered]++; cpu[server, offered] += us }
            rounds[round] = 1
        }
        END {
            n = 0; sa = 0; sb = 0
            for (r in rounds) { n++; sa += best[a, r]; sb += best[b, r] }
            if (n == 0) exit
            ma = sa / n; mb = sb / n
            printf "%-9s highest clean rate: %s %.0f/s, %s %.0f/s, ratio %.2f\n", part, a, ma, b, mb, (mb > 0 ? ma / mb : 0)
            common = 0
            for (k in ok) {
                split(k, f, SUBSEP)
                if (f[1] == a && ok[a, f[2]] == n && ok[b, f[2]] == n && f[2] + 0 > common) common = f[2] + 0
            }
            if (common > 0) {
                ca = cpu[a, common] / n; cb = cpu[b, common] / n
                printf "%-9s CPU per success at %d/s: %s %.1f us, %s %.1f us, ratio %.2f\n", part, common, a, ca, b, cb, ca / cb
            }
        }' "$SUMMARY"
}

install_peers
build_release

for part in $PARTS; do
    case "$part" in
        register)
            echo "SEQUENTIAL" >"$WORK/users.csv"
            awk -v n="$EXTENSIONS" -v first="$FIRST_EXT" -v csv="$WORK/reg-extensions.csv" \
                -v users="$WORK/users.csv" 'BEGIN {
                for (i = 0; i < n; i++) {
                    ext = first + i
                    print ext ",bench-pw-" ext > csv
                    print ext ";[authentication username=" ext " password=bench-pw-" ext "]" >> users
                }
            }'
            for round in $(seq 1 "$ROUNDS"); do
                register_seq outpost "$round"
                register_seq kamailio "$round"
            done
            ;;
        calls)
            write_pairs
            for round in $(seq 1 "$ROUNDS"); do
                for server in $CALL_SERVERS; do
                    calls_seq "$server" "$round"
                done
            done
            ;;
        relay)
            PEER=rtpengine "$BENCH/relay.sh"
            ;;
        *)
            echo "bench: unknown part $part (register, calls, relay)" >&2
            exit 1
            ;;
    esac
done

echo
echo "=== summary (part, server, round, then offered achieved calls failed failed% cpu% cpu-us/ok)"
cat "$SUMMARY"
echo
[ ! -s "$WORK/mem.txt" ] || {
    echo "memory with $EXTENSIONS registered (server round RSS PSS, KiB):"
    sed 's/^mem /  /' "$WORK/mem.txt"
}
for part in $PARTS; do
    case "$part" in
        register) ratios register outpost kamailio ;;
        calls)
            ratios calls outpost kamailio
            ratios calls outpost kamailio+rtpengine
            ;;
    esac
done
