#!/usr/bin/env bash
# Benchmark: the firmware image under qemu-system-aarch64 (-M virt, one Cortex-A53, 512 MiB).
# Not run by CI. Builds a bench image into target/image-bench whose configuration adds
# EXTENSIONS demo extensions (their generated passwords are printed once on the serial
# console, which we parse), the metrics endpoint on 0.0.0.0:9100, MD5 offered first (SIPp 3.6)
# and the allow-listed host address 10.0.2.2 (qemu's user network delivers every host packet
# from it, and the firewall would otherwise ban a source that registers 200 phones at once).
# Boots it with the disk as a snapshot and prints, one figure per line:
#
#   image and binary sizes; seconds from qemu start to the first 200 answer to OPTIONS;
#   outpostd's RSS at idle (GET /metrics, outpost_process_resident_memory_bytes); then
#   EXTENSIONS phones register (SIPp, REG_RATE/s) and the RSS again, with the registrations
#   count from the metrics.
#
#   bench/image.sh
#   NO_BUILD=1 IDLE_SECS=10 SETTLE_SECS=35 bench/image.sh     # reuse target/image-bench
#   SSH_KEY=~/.ssh/id_ed25519.pub bench/image.sh              # also bake an admin SSH key
#
# Needs qemu-system-aarch64 (qemu-system-arm), sipp (sip-tester), python3, and what
# `outpost-image build` needs (see docs/image.md). Every wait is bounded; qemu is killed on exit.
source "$(dirname "$0")/lib.sh"

EXTENSIONS=${EXTENSIONS:-200}
FIRST_EXT=${FIRST_EXT:-1000}
REG_RATE=${REG_RATE:-50}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-240}
IDLE_SECS=${IDLE_SECS:-30}
# Non-INVITE server transactions live 32 s (Timer J) after their final response.
SETTLE_SECS=${SETTLE_SECS:-35}
IMAGE=${IMAGE_DIR:-$TARGET_DIR/image-bench}
EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
AARCH64=$TARGET_DIR/aarch64-unknown-linux-musl/release
LOG=$WORK/serial.log
QEMU_PID=""

need qemu-system-aarch64 qemu-system-arm
need sipp sip-tester
need python3 python3

stop_qemu() {
    local i
    if [ -n "$QEMU_PID" ]; then
        kill -TERM "$QEMU_PID" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$QEMU_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    QEMU_PID=""
}

image_cleanup() {
    stop_qemu
    cleanup
}
trap image_cleanup EXIT
trap 'exit 130' INT TERM

# figure LABEL VALUE: one result line.
figure() {
    printf '%-52s %s\n' "$1:" "$2"
}

# bytes FILE: apparent size in bytes.
bytes() {
    stat -c %s "$1"
}

# mib BYTES: "12.3 MiB (12897484 bytes)".
mib() {
    awk -v b="$1" 'BEGIN { printf "%.1f MiB (%d bytes)", b / 1048576, b }'
}

free_port() {
    python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "$1"
}

# metric NAME: the value of NAME from the guest's GET /metrics, or "n/a".
metric() {
    python3 - "$METRICS_PORT" "$1" <<'PY'
import sys, time, urllib.request
port, name = sys.argv[1], sys.argv[2]
for attempt in range(5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read(1 << 20).decode("utf-8", "replace")
        break
    except Exception:  # refused, reset, timed out, not HTTP: the endpoint is not there (yet)
        text = None
        time.sleep(1)
if text is None:
    print("n/a")
    sys.exit(0)
for line in text.splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[0] == name:
        print(parts[1])
        break
else:
    print("n/a")
PY
}

# rss_figure LABEL: outpostd's RSS from the metrics, or "n/a" until the daemon exports it.
rss_figure() {
    local rss
    rss=$(metric outpost_process_resident_memory_bytes)
    if [ "$rss" = n/a ]; then
        figure "$1" "n/a (no outpost_process_resident_memory_bytes in /metrics)"
    else
        figure "$1" "$(mib "$rss")"
    fi
}

# --- the bench image ---------------------------------------------------------------------
if [ -z "${NO_BUILD:-}" ]; then
    extra=$WORK/bench-config.toml
    {
        echo "# bench/image.sh: demo extensions, metrics, SIPp's MD5, the host allow-listed."
        echo "[demo]"
        printf 'extensions = ['
        seq -s, -f '"%g"' "$FIRST_EXT" $((FIRST_EXT + EXTENSIONS - 1)) | tr -d '\n'
        echo "]"
        echo
        echo "[auth]"
        echo 'algorithms = ["MD5", "SHA-256"]'
        echo
        echo "[metrics]"
        echo 'listen = "0.0.0.0:9100"'
        echo
        echo "[firewall.detect]"
        echo 'allow = ["10.0.2.2/32"]'
    } >"$extra"
    echo "bench: cargo build -p outpost-image"
    (cd "$ROOT" && cargo build -p outpost-image)
    build_args=(build --out "$IMAGE" --workspace "$ROOT" --profile qemu-virt --config-extra "$extra")
    if [ -n "${SSH_KEY:-}" ]; then
        build_args+=(--ssh-key "$SSH_KEY")
    fi
    echo "bench: SOURCE_DATE_EPOCH=$EPOCH outpost-image ${build_args[*]}"
    t0=$(date +%s)
    (cd "$ROOT" && SOURCE_DATE_EPOCH=$EPOCH RUST_LIB_BACKTRACE=0 timeout 1800 "$TARGET_DIR/debug/outpost-image" "${build_args[@]}") \
        >"$WORK/build.log" 2>&1 || {
        echo "bench: the image build failed:" >&2
        tail -n 40 "$WORK/build.log" >&2
        exit 1
    }
    build_secs=$(($(date +%s) - t0))
else
    build_secs=""
fi
for f in disk.img root.squashfs initramfs.cpio.gz vmlinuz; do
    [ -f "$IMAGE/$f" ] || {
        echo "bench: $IMAGE/$f is missing (run without NO_BUILD=1)" >&2
        exit 1
    }
done

echo
if [ -n "$build_secs" ]; then
    figure "image build (outpost-image build, cargo included)" "$build_secs s"
fi
figure "disk.img, apparent size" "$(mib "$(bytes "$IMAGE/disk.img")")"
figure "disk.img, allocated (du)" "$(mib $(($(du -k "$IMAGE/disk.img" | cut -f1) * 1024)))"
figure "root.squashfs" "$(mib "$(bytes "$IMAGE/root.squashfs")")"
figure "initramfs.cpio.gz" "$(mib "$(bytes "$IMAGE/initramfs.cpio.gz")")"
figure "vmlinuz" "$(mib "$(bytes "$IMAGE/vmlinuz")")"
for b in outpostd outpostctl; do
    if [ -f "$AARCH64/$b" ]; then
        figure "$b (static aarch64 musl, release)" "$(mib "$(bytes "$AARCH64/$b")")"
    else
        figure "$b (static aarch64 musl, release)" "n/a (not built)"
    fi
done

# --- boot ----------------------------------------------------------------------------------
SIP_HOST_PORT=$(free_port udp)
METRICS_PORT=$(free_port tcp)
: >"$LOG"
T0=$(date +%s.%N)
qemu-system-aarch64 -M virt -cpu cortex-a53 -m 512 -smp 1 -no-reboot \
    -display none -monitor none \
    -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initramfs.cpio.gz" \
    -append "console=ttyAMA0 panic=-1" \
    -drive "if=none,id=d0,format=raw,snapshot=on,file=$IMAGE/disk.img" \
    -device virtio-blk-device,drive=d0 \
    -netdev "user,id=n0,hostfwd=udp:127.0.0.1:$SIP_HOST_PORT-:5060,hostfwd=tcp:127.0.0.1:$METRICS_PORT-:9100" \
    -device virtio-net-device,netdev=n0 -device i6300esb \
    -serial "file:$LOG" </dev/null >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!

# First 200 to OPTIONS: one probe every 0.5 s until BOOT_TIMEOUT; prints its arrival time
# (seconds since the epoch), or fails when qemu exits or time runs out.
answered=$(python3 - "$SIP_HOST_PORT" "$BOOT_TIMEOUT" "$QEMU_PID" <<'PY'
import os, socket, sys, time
port, limit, qemu = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
local = "127.0.0.1:%d" % s.getsockname()[1]
deadline = time.monotonic() + limit
n = 0
while time.monotonic() < deadline:
    if not os.path.exists(f"/proc/{qemu}"):
        sys.exit("qemu exited during boot")
    n += 1
    msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP {local};branch=z9hG4bK-bench-{n};rport\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag=b{n}\r\n"
           f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: bench-boot-{n}@127.0.0.1\r\n"
           f"CSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    s.sendto(msg, ("127.0.0.1", port))
    until = time.monotonic() + 0.5
    while True:
        left = until - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except OSError:
            break
        if data.startswith(b"SIP/2.0 200"):
            print(f"{time.time():.3f}")
            sys.exit(0)
sys.exit(f"no 200 to OPTIONS within {limit:.0f} s")
PY
) || {
    echo "bench: the guest never answered OPTIONS; console:" >&2
    tail -n 60 "$LOG" >&2
    exit 1
}
figure "boot: qemu start -> first 200 to OPTIONS" "$(awk -v a="$T0" -v b="$answered" 'BEGIN { printf "%.1f s", b - a }')"

# The demo passwords, printed once by outpostd on the console (ANSI colours stripped).
users=$WORK/users.csv
found=0
for i in $(seq 1 120); do
    sed 's/\x1b\[[0-9;]*[A-Za-z]//g; s/\r//g' "$LOG" |
        sed -n 's/.*demo extension \([A-Za-z0-9]*\): password \([A-Za-z0-9]*\).*/\1;[authentication username=\1 password=\2]/p' |
        sort -u >"$WORK/passwords"
    found=$(wc -l <"$WORK/passwords")
    [ "$found" -ge "$EXTENSIONS" ] && break
    sleep 0.5
done
if [ "$found" -lt "$EXTENSIONS" ]; then
    echo "bench: only $found of $EXTENSIONS demo passwords on the console" >&2
    exit 1
fi
{
    echo "SEQUENTIAL"
    cat "$WORK/passwords"
} >"$users"

echo "bench: idle for ${IDLE_SECS} s"
sleep "$IDLE_SECS"
rss_figure "outpostd RSS at idle"
figure "registrations at idle (metrics)" "$(metric outpost_registrations)"

# --- EXTENSIONS phones register --------------------------------------------------------------
reg=$WORK/register
mkdir -p "$reg"
sipp_port=$(free_port udp)
t0=$(date +%s.%N)
(cd "$reg" && timeout $((EXTENSIONS / REG_RATE + 90)) sipp "127.0.0.1:$SIP_HOST_PORT" -i 127.0.0.1 \
    -p "$sipp_port" -t u1 -nostdin -sf "$BENCH/register.xml" -inf "$users" \
    -r "$REG_RATE" -m "$EXTENSIONS" -l "$EXTENSIONS" \
    -timeout "$((EXTENSIONS / REG_RATE + 60))s" -timeout_error \
    -trace_stat -stf "$reg/stats.csv" -fd 1 -trace_err -error_file "$reg/errors.log" \
    >"$reg/screen.log" 2>&1) || true
t1=$(date +%s.%N)
ok=$(csv_last "$reg/stats.csv" "SuccessfulCall(C)")
failed=$(csv_last "$reg/stats.csv" "FailedCall(C)")
figure "register $EXTENSIONS phones at $REG_RATE/s (SIPp)" \
    "$ok ok, $failed failed, $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f s", b - a }')"

echo "bench: idle for ${SETTLE_SECS} s (server transactions end)"
sleep "$SETTLE_SECS"
rss_figure "outpostd RSS with the phones registered"
figure "registrations (metrics)" "$(metric outpost_registrations)"
if ! kill -0 "$QEMU_PID" 2>/dev/null; then
    echo "bench: qemu exited during the benchmark; console:" >&2
    tail -n 60 "$LOG" >&2
    exit 1
fi
