#!/usr/bin/env bash
# Builds, here, everything a lent GPU machine runs (it has no Rust toolchain and no network), into
# .device/ (git-ignored; carried by the device tool): the conformance test binary with the CUDA and
# wgpu backends, the benchmark report, and the Vulkan loader packages that machine lacks.
# Then, in one device `run` with carry [".device"]:  bash scripts/device-run.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dev=.device
rm -rf "$dev" && mkdir -p "$dev/gl"

test_bin=$(cargo test --release -p conformance --features cuda,wgpu --test backends --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="backends": print(m["executable"])' | tail -n1)
[ -n "$test_bin" ] || { echo "could not build the conformance test binary" >&2; exit 1; }
cp "$test_bin" "$dev/conformance-backends"
cargo build --release -p w4a8-benches --features cuda,wgpu --bin w4a8-bench
cp target/release/w4a8-bench "$dev/"
strip "$dev/conformance-backends" "$dev/w4a8-bench"
git rev-parse HEAD > "$dev/commit"

# The Vulkan loader (and what it pulls in) as amd64 packages, unpacked on the device by device-run.sh.
opts='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/w4a8-amd64'
mkdir -p /tmp/w4a8-amd64/partial
apt-get $opts update -qq
(cd "$dev/gl" && apt-get $opts download libvulkan1 >/dev/null)
du -sh "$dev"
