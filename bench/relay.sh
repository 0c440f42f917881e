#!/usr/bin/env bash
# Benchmark: the RTP relay, both I/O back ends back to back in one run. Not run by CI.
# N concurrent G.711 calls through the real relay engine on its real UDP sockets
# (firmware/benches/relay.rs): each call's two phones send 50 packets/s of 172-byte RTP;
# the relay thread runs on CPU 0, the phones on CPU 1. For each N the epoll and io_uring
# back ends alternate (epoll, uring, epoll, uring with ROUNDS=2), each on a fresh relay.
#
#   bench/relay.sh                                  # N = 1000 2000 3000 3500 4000 4500 5000
#   STEPS=2000,4000 SECS=5 ROUNDS=3 bench/relay.sh
#   IO=uring STEPS=4000 bench/relay.sh              # one back end only (epoll | uring)
#   PEER=rtpengine bench/relay.sh                   # adds Debian's rtpengine (user space) to
#                                                   # every round, pinned the same: on demand
#   IO=kernel PEER=rtpengine bench/relay.sh         # epoll vs the kernel fast path
#                                                   # ([media] kernel_fast_path) vs rtpengine
#
# IO=kernel runs Outpost's relay (both the epoll row and the kernel row) in a network
# namespace (relaybench-box, 10.78.0.1) reached from the phones here (10.78.0.2) over a veth
# pair, since the fast path forwards between interfaces; rtpengine stays on loopback (a
# cheaper path than the veth: the comparison does not flatter Outpost). Its "box µs/p"
# column is every CPU's busy time less the generator thread's, per relayed packet: softirq
# forwarding counts wherever it ran.
#
# The relay binds 127.0.0.2 (ports from PORT, 4 per call), rtpengine 127.0.0.3, the phones
# 127.0.0.1. Every step is bounded: SECS (default 5, at most 60) of sending plus 0.3 s of draining.
# The syscalls-per-packet column needs tracefs (mounted here when missing) and root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${STEPS:-1000,2000,3000,3500,4000,4500,5000}
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-2}
IO=${IO:-both}
PORT=${PORT:-10000}

if [ "$(nproc)" -lt 2 ]; then
    echo "bench: needs 2 CPUs (relay on CPU 0, phones on CPU 1)" >&2
    exit 1
fi
if [ ! -e /sys/kernel/tracing/events/raw_syscalls/sys_enter/id ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null ||
        echo "bench: tracefs unavailable: no syscalls-per-packet figure" >&2
fi
echo "bench: $(uname -r), $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
cd "$ROOT"
# Built first, so that rtpengine's start does not wait on the compiler.
cargo bench -p firmware --bench relay --no-run

RTPENGINE_PID=""
NETNS=""
cleanup() {
    if [ -n "$NETNS" ]; then
        ip link del rbveth0 2>/dev/null || true
        ip netns del "$NETNS" 2>/dev/null || true
    fi
    if [ -n "$RTPENGINE_PID" ]; then
        kill "$RTPENGINE_PID" 2>/dev/null || true
        wait "$RTPENGINE_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
if [ "$IO" = kernel ]; then
    NETNS=relaybench-box
    ip netns del "$NETNS" 2>/dev/null || true
    ip link del rbveth0 2>/dev/null || true
    ip netns add "$NETNS"
    ip link add rbveth0 type veth peer name rbveth1 netns "$NETNS"
    ip addr add 10.78.0.2/24 dev rbveth0
    ip link set rbveth0 up
    ip -n "$NETNS" link set lo up
    ip -n "$NETNS" addr add 10.78.0.1/24 dev rbveth1
    ip -n "$NETNS" link set rbveth1 up
    # Hairpin forwarding (phones on one link): no ICMP redirects for it.
    ip netns exec "$NETNS" sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.rbveth1.send_redirects=0
    export RELAY_BENCH_NETNS=$NETNS
    echo "bench: relay in namespace $NETNS (10.78.0.1), phones on 10.78.0.2 over veth"
fi
if [ "${PEER:-}" = rtpengine ]; then
    command -v rtpengine >/dev/null 2>&1 || {
        echo "bench: rtpengine is missing (apt-get install -y rtpengine-daemon)" >&2
        exit 1
    }
    # User space only (no kernel table), one worker thread, on the relay's CPU.
    NG_PORT=${NG_PORT:-22299}
    # On 127.0.0.3, so its ports collide with nothing on 127.0.0.1 or the relay's 127.0.0.2.
    taskset -c 0 rtpengine --table=-1 --interface=127.0.0.3 --listen-ng=127.0.0.3:"$NG_PORT" \
        --port-min=6000 --port-max=29999 --num-threads=1 --media-num-threads=1 \
        --foreground --log-stderr --log-level=3 --delete-delay=0 --timeout=60 \
        >/tmp/relay-bench-rtpengine.log 2>&1 &
    RTPENGINE_PID=$!
    sleep 1
    kill -0 "$RTPENGINE_PID" || {
        cat /tmp/relay-bench-rtpengine.log >&2
        exit 1
    }
    echo "bench: rtpengine $(rtpengine --version 2>&1 | awk '{print $2}') pid $RTPENGINE_PID on CPU 0, ng on 127.0.0.3:$NG_PORT"
    export RELAY_BENCH_RTPENGINE=127.0.0.3:$NG_PORT RELAY_BENCH_RTPENGINE_PID=$RTPENGINE_PID
fi
RELAY_BENCH_STEPS=$STEPS RELAY_BENCH_SECS=$SECS RELAY_BENCH_ROUNDS=$ROUNDS \
    RELAY_BENCH_IO=$IO RELAY_BENCH_PORT=$PORT \
    cargo bench -p firmware --bench relay
