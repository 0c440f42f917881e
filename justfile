# Outpost developer recipes. `just` lists them.

default:
    @just --list

# Run the daemon on the embedded demo configuration (loopback, demo extensions 100-103)
run:
    cargo run --release -p firmware --bin outpostd

# Every check and test, as CI runs them (installs sip-tester, qemu-user-static, the aarch64 target)
test:
    tests/run-all

# Formatting and lints
check:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Static aarch64 release build of the firmware, run under qemu-aarch64-static
cross:
    scripts/cross-check

# Firmware image for a board (qemu-virt or rpi4) into target/image: disk.img, vmlinuz, initramfs, manifest
image profile="qemu-virt":
    cargo run -p outpost-image -- build --profile {{profile}} --out target/image

# Signed update bundle of target/image (key: an update secret key; the development key by default)
bundle key="target/image-keys/dev.key" out="target/outpost.bundle":
    cargo run -p outpost-image -- bundle --image target/image --key {{key}} --out {{out}}

# Licences of the crates linked into the firmware, checked against image/licences.toml
licences:
    cargo run -p outpost-image -- licences

# REGISTER benchmark (not run by CI; see bench/README.md)
bench-register:
    bench/register.sh

# Image benchmark: sizes, boot to first SIP answer under qemu, outpostd RSS idle and with 200 phones
bench-image:
    bench/image.sh

# Call-setup benchmark (not run by CI; see bench/README.md)
bench-calls:
    bench/calls.sh

# Fuzz the SIP parser for 60 s (needs a nightly toolchain and cargo-fuzz)
fuzz:
    cd fuzz && cargo +nightly fuzz run wire_parse -- -max_total_time=60
