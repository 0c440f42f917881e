#!/usr/bin/env bash
# Benchmark: the SIP firewall with real nftables, as root, in network namespaces. Not run
# by CI. A release outpostd runs in an "appliance" namespace (pinned to CPU 0); an attacker
# and two phone namespaces reach it over a bridge (10.77.0.0/24). Prints:
#
#  (a) time from an attack's first packet (a scanner OPTIONS) to the kernel dropping the
#      source: the attacker sends the OPTIONS, then one plain OPTIONS every 0.5 ms; when the
#      kernel's `banned` counter has risen the sender stops, and the first dropped packet is
#      the (sent - dropped)-th one: its send time minus the first packet's. Median of RUNS.
#  (b) outpostd CPU (utime + stime from /proc/<pid>/stat) during a FLOOD_SECS flood of UDP
#      packets to port 5060 from a banned source (hping3 --flood on CPU 1), in three setups:
#      banned in the kernel; the kernel's ban element deleted (the per-source meter still
#      drops most of it); and `[firewall] enforce = "off"` (no nftables at all, the daemon
#      drops the source in user space);
#  (c) during each flood, CALLS SIPp calls between two phone namespaces (ext 200 -> 201, held
#      200 ms, CALL_RATE/s): the success rate (goal 100 %);
#  (d) time to load 10,000 bans after boot: `fw import` of BANS addresses, then outpostd
#      stops, our table is deleted (as after a reboot), outpostd starts again, and we time
#      until `nft list set inet outpost ban4` holds all of them.
#
#   sudo bench/firewall.sh
#   RUNS=5 FLOOD_SECS=3 CALLS=20 BANS=2000 sudo -E bench/firewall.sh
#   FW_TOML=$'[firewall.connections]\nkernel = false' sudo -E bench/firewall.sh
#
# FW_TOML is appended to the appliance's configuration (whole tables).
# Needs: root, ip, nft, sipp (sip-tester), hping3, python3, taskset. Everything is bounded:
# RUNS sends of at most 3 s, floods by `timeout`, SIPp by -m and -timeout, polls by deadlines.
# The namespaces are deleted and the processes stopped on exit.
source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-10}
FLOOD_SECS=${FLOOD_SECS:-5}
CALLS=${CALLS:-50}
CALL_RATE=${CALL_RATE:-10}
BANS=${BANS:-10000}
TAG=${TAG:-$$}
APP=opb-app-$TAG
ATK=opb-atk-$TAG
PH1=opb-ph1-$TAG
PH2=opb-ph2-$TAG
NET=10.77.0
APP_IP=$NET.1
FLOOD_IP=$NET.3
PH1_IP=$NET.11
PH2_IP=$NET.12
SIP=5060

if [ "$(id -u)" != 0 ]; then
    echo "bench: run as root (network namespaces and nftables)" >&2
    exit 1
fi
need ip iproute2
need nft nftables
need hping3 hping3
need python3 python3

stop_fw_daemon() {
    if [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    DAEMON_PID=""
}

fw_cleanup() {
    local ns pid
    stop_fw_daemon
    for ns in "$ATK" "$PH1" "$PH2" "$APP"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
    # Reap them quietly (no "Killed" job reports).
    wait 2>/dev/null || true
    DAEMON_PID=""
    cleanup
    for ns in "$ATK" "$PH1" "$PH2" "$APP"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap fw_cleanup EXIT

in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

make_lab() {
    local ns
    for ns in "$APP" "$ATK" "$PH1" "$PH2"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip -n "$APP" link add br0 type bridge forward_delay 0
    ip -n "$APP" addr add "$APP_IP/24" dev br0
    ip -n "$APP" link set br0 up
    local spec port host addrs a
    for spec in "$ATK:vatk:$FLOOD_IP $(seq -s' ' -f "$NET.%g" 20 $((19 + RUNS)))" \
        "$PH1:vph1:$PH1_IP" "$PH2:vph2:$PH2_IP"; do
        host=${spec%%:*}
        port=${spec#*:}
        port=${port%%:*}
        addrs=${spec##*:}
        ip -n "$APP" link add "$port" type veth peer name eth0 netns "$host"
        ip -n "$APP" link set "$port" master br0
        ip -n "$APP" link set "$port" up
        for a in $addrs; do
            ip -n "$host" addr add "$a/24" dev eth0
        done
        ip -n "$host" link set eth0 up
    done
}

# write_config ENFORCE: the appliance's configuration (the phones are the office LAN:
# allow-listed, as on a real site, so SIPp's call bursts never trip the flood rule).
write_config() {
    mkdir -p "$WORK/data"
    cat >"$WORK/outpost.toml" <<TOML
[sip]
listen = ["$APP_IP:$SIP"]

[auth]
algorithms = ["MD5", "SHA-256"]

[store]
data_dir = "$WORK/data"

[admin]
socket = "$WORK/admin.sock"

[log]
level = "warn"

[media]
port_first = 20000
port_last = 20999

[firewall]
enforce = "$1"

[firewall.detect]
allow = ["$PH1_IP/32", "$PH2_IP/32"]

${FW_TOML:-}
TOML
}

# start_fw_daemon: outpostd in the appliance namespace on CPU 0; sets DAEMON_PID and
# START_NS (when it was started, ns since the epoch).
start_fw_daemon() {
    START_NS=$(date +%s%N)
    # `ip netns exec` and taskset exec in turn: $! is outpostd's own pid.
    ip netns exec "$APP" taskset -c 0 "$OUTPOSTD" --config "$WORK/outpost.toml" 2>>"$WORK/outpostd.log" &
    DAEMON_PID=$!
    local i
    for i in $(seq 1 100); do
        if ctl status >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    echo "bench: outpostd did not start:" >&2
    cat "$WORK/outpostd.log" >&2
    exit 1
}

wait_table() {
    local i
    for i in $(seq 1 100); do
        in_ns "$APP" nft list set inet outpost ban4 >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "bench: the nftables table was not installed" >&2
    exit 1
}

# counter [NAME]: packets of our named counter NAME (default `banned`; `flood` is the
# per-source meter's), 0 without the table.
counter() {
    in_ns "$APP" nft -j list counter inet outpost "${1:-banned}" 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print([o["counter"]["packets"] for o in d["nftables"] if "counter" in o][0])' 2>/dev/null ||
        echo 0
}

rx_packets() {
    ip -n "$APP" -s -j link show "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])'
}

echo "bench: cargo build --release -p firmware --bins"
(cd "$ROOT" && cargo build --release -p firmware --bins)
need sipp sip-tester
need taskset util-linux
make_lab
write_config auto
start_fw_daemon
wait_table
echo "bench: outpostd pid $DAEMON_PID in namespace $APP at $APP_IP:$SIP (CPU 0)"

# --- (a) first packet -> kernel drop --------------------------------------------------
cat >"$WORK/first_drop.py" <<'PY'
# Runs in the appliance namespace; the sender thread moves itself into the attacker's.
import ctypes, os, socket, subprocess, sys, threading, time, json

src, dst, atk_ns = sys.argv[1], sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)

def counter():
    out = subprocess.run(["nft", "-j", "list", "counter", "inet", "outpost", "banned"],
                         capture_output=True, text=True, timeout=5).stdout
    return [o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o][0]

def options(n, ua):
    return (f"OPTIONS sip:{dst} SIP/2.0\r\nVia: SIP/2.0/UDP {src}:5099;branch=z9hG4bK-b{n}\r\n"
            f"From: <sip:probe@{src}>;tag=b{n}\r\nTo: <sip:{dst}>\r\nCall-ID: b{n}@{src}\r\n"
            f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n{ua}Content-Length: 0\r\n\r\n").encode()

sent, stop, ready = [], threading.Event(), threading.Event()

def sender():
    fd = os.open(f"/run/netns/{atk_ns}", os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.connect((dst, 5060))
    plain = options(1, "")
    ready.wait()
    sent.append(time.monotonic_ns())
    s.send(options(0, "User-Agent: friendly-scanner\r\n"))
    deadline = time.monotonic() + 3
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.0005)
        sent.append(time.monotonic_ns())
        try:
            s.send(plain)
        except OSError:
            pass

base = counter()
t = threading.Thread(target=sender)
t.start()
ready.set()
deadline = time.monotonic() + 3
while time.monotonic() < deadline and counter() <= base:
    pass
stop.set()
t.join()
time.sleep(0.1)
dropped = counter() - base
if dropped <= 0 or dropped >= len(sent):
    print("nan")
else:
    first = len(sent) - dropped
    print(f"{(sent[first] - sent[0]) / 1e6:.2f}")
PY
echo
echo "(a) scanner OPTIONS -> kernel drops the source (ms), $RUNS runs from fresh addresses:"
results=()
for i in $(seq 1 "$RUNS"); do
    ms=$(in_ns "$APP" python3 "$WORK/first_drop.py" "$NET.$((19 + i))" "$APP_IP" "$ATK")
    results+=("$ms")
    sleep 0.2
done
echo "    runs: ${results[*]}"
printf '%s\n' "${results[@]}" | sort -g | awk '
    { v[NR] = $1 }
    END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          printf "    median: %.2f ms (min %.2f, max %.2f)\n", m, v[1], v[NR] }'

# --- (b) + (c) flood: CPU and legitimate calls -----------------------------------------
echo "200,bench-pw-200" >"$WORK/ext.csv"
echo "201,bench-pw-201" >>"$WORK/ext.csv"
ctl ext import "$WORK/ext.csv" >/dev/null
printf 'SEQUENTIAL\n201;[authentication username=201 password=bench-pw-201]\n' >"$WORK/callee.csv"
printf 'SEQUENTIAL\n200;[authentication username=200 password=bench-pw-200];201\n' >"$WORK/caller.csv"
echo "$FLOOD_IP" >"$WORK/flood-source.txt"
ctl fw import "$WORK/flood-source.txt" --ban-secs 86400 >/dev/null

# start_callee: registers 201 from the second phone and answers every call there.
start_callee() {
    (cd "$WORK" && in_ns "$PH2" taskset -c 1 sipp "$APP_IP:$SIP" -i "$PH2_IP" -p 5062 -t u1 -nostdin \
        -sf "$BENCH/register.xml" -inf "$WORK/callee.csv" -m 1 -timeout 10s -timeout_error \
        >"$WORK/callee-register.log" 2>&1) || {
        echo "bench: the callee did not register" >&2
        cat "$WORK/callee-register.log" >&2
        exit 1
    }
    (cd "$WORK" && exec ip netns exec "$PH2" taskset -c 1 sipp -sf "$BENCH/uas.xml" -i "$PH2_IP" \
        -p 5062 -t u1 -nostdin -timeout 600s >"$WORK/uas.log" 2>&1) &
    BG_PIDS+=($!)
    disown
    sleep 0.5
}

# kernel_drops: packets dropped by the ban sets and the flood meter so far.
kernel_drops() {
    echo $(($(counter banned) + $(counter flood)))
}

# flood_step NAME [none]: CALLS calls with a FLOOD_SECS flood from the banned source
# meanwhile (no flood with `none`, for the baseline).
flood_step() {
    local name=$1 dir="$WORK/flood-${2:-x}-$RANDOM"
    mkdir -p "$dir"
    local rx0 k0 c0 t0 rx1 k1 c1 t1 flood=""
    rx0=$(rx_packets vatk)
    k0=$(kernel_drops)
    c0=$(cpu_ticks)
    t0=$(date +%s.%N)
    if [ "${2:-}" != none ]; then
        in_ns "$ATK" taskset -c 1 timeout -s INT "$FLOOD_SECS" hping3 --udp -p "$SIP" -a "$FLOOD_IP" \
            -d 120 --flood -q "$APP_IP" >"$dir/hping3.log" 2>&1 &
        flood=$!
    fi
    (cd "$dir" && in_ns "$PH1" taskset -c 1 sipp "$APP_IP:$SIP" -i "$PH1_IP" -p 5064 -t u1 -nostdin \
        -sf "$BENCH/uac_call.xml" -inf "$WORK/caller.csv" -auth_uri "201@$APP_IP:$SIP" \
        -r "$CALL_RATE" -m "$CALLS" -d 200 \
        -timeout "$((FLOOD_SECS + 30))s" -timeout_error -trace_stat -stf "$dir/stats.csv" -fd 1 \
        >"$dir/sipp.log" 2>&1) || true
    if [ -n "$flood" ]; then
        wait "$flood" 2>/dev/null || true
    fi
    t1=$(date +%s.%N)
    c1=$(cpu_ticks)
    k1=$(kernel_drops)
    rx1=$(rx_packets vatk)
    local ok failed
    ok=$(csv_last "$dir/stats.csv" "SuccessfulCall(C)")
    failed=$(csv_last "$dir/stats.csv" "FailedCall(C)")
    awk -v n="$name" -v rx=$((rx1 - rx0)) -v k=$((k1 - k0)) -v c=$((c1 - c0)) -v hz="$CLK_TCK" \
        -v t0="$t0" -v t1="$t1" -v fs="$FLOOD_SECS" -v ok="$ok" -v f="$failed" -v calls="$CALLS" 'BEGIN {
        el = t1 - t0
        printf "    %-26s %10.0f %12.0f %11.1f %9s/%-3s %6.1f %%\n", n, rx / fs, k / fs,
            100 * c / hz / el, ok, calls, (calls > 0 ? 100 * ok / calls : 0)
    }'
}

echo
echo "(b) outpostd CPU during a ${FLOOD_SECS} s UDP flood from a banned source, and"
echo "(c) $CALLS calls 200 -> 201 between the phone namespaces meanwhile ($CALL_RATE/s, held 200 ms):"
printf '    %-26s %10s %12s %11s %13s %8s\n' setup "flood pps" "kernel drop/s" "outpostd %" "calls ok" "success"
start_callee
flood_step "no flood (calls only)" none
flood_step "banned in the kernel"
in_ns "$APP" nft delete element inet outpost ban4 "{ $FLOOD_IP }"
flood_step "ban element deleted (meter)"
stop_fw_daemon
in_ns "$APP" nft delete table inet outpost 2>/dev/null || true
write_config off
start_fw_daemon
# The callee's registration is in the store and its SIPp still answers.
flood_step "enforce = off (user space)"

# --- (d) 10,000 bans after boot ----------------------------------------------------------
python3 - "$BANS" >"$WORK/bans.txt" <<'PY'
import ipaddress, sys
base = int(ipaddress.ip_address("198.18.0.0"))
for i in range(int(sys.argv[1])):
    print(ipaddress.ip_address(base + i))
PY
stop_fw_daemon
write_config auto
start_fw_daemon
wait_table
t0=$(date +%s%N)
ctl fw import "$WORK/bans.txt" --ban-secs 86400 >/dev/null
t1=$(date +%s%N)
stop_fw_daemon
in_ns "$APP" nft delete table inet outpost
start_fw_daemon
ready_ns=$(date +%s%N)
# Every stored ban comes back in the one transaction that installs the table, so the set
# appears with all of them (the flood source and the runs of (a) included).
want=$BANS
loaded=""
for i in $(seq 1 600); do
    n=$(in_ns "$APP" nft -j list set inet outpost ban4 2>/dev/null |
        python3 -c 'import json,sys
try:
    d = json.load(sys.stdin)
    print(sum(len(o["set"].get("elem", [])) for o in d["nftables"] if "set" in o))
except Exception:
    print(0)')
    if [ "$n" -ge "$want" ]; then
        loaded=$(date +%s%N)
        break
    fi
    sleep 0.02
done
echo
echo "(d) $BANS bans after boot:"
echo "    fw import of $BANS addresses: $(((t1 - t0) / 1000000)) ms"
echo "    outpostd start -> admin socket answers: $(((ready_ns - START_NS) / 1000000)) ms"
if [ -n "$loaded" ]; then
    echo "    outpostd start -> all $want bans in the kernel set: $(((loaded - START_NS) / 1000000)) ms"
else
    echo "    the kernel set did not reach $want elements within 12 s (last count: $n)"
fi
