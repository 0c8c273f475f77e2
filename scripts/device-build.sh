#!/usr/bin/env bash
# Builds, here, everything a lent GPU machine runs (it has no Rust toolchain and no network) into
# .device/ (git-ignored; the device tool carries it): the release conformance test binary with the
# CUDA and wgpu backends, the CUDA crate's own GPU tests, the `w4a8` CLI, the benchmark report, and
# the wgpu crate's exactness and tiled-kernel tests (run there on NVIDIA's Vulkan driver), and the
# Vulkan loader packages that machine lacks. Then one device `run` per step, carry [".device"]:
#     bash scripts/device-run.sh conformance      (then sanitize, bench-decode, bench-large, vulkan, profile)
# It ends by checking that every binary starts here and that what travels stays under 64 MiB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dev=.device
rm -rf "$dev" && mkdir -p "$dev/bin" "$dev/gl"

# The executable cargo builds for test target `$2` of package `$1` (with features `$3`).
test_binary() {
  cargo test --release -p "$1" ${3:+--features "$3"} --test "$2" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]==sys.argv[1]: print(m["executable"])' "$2" \
    | tail -n1
}
# wgpu-exact and wgpu-tiled: the soft-float fallbacks and the tiled GEMMs' tails on NVIDIA's Vulkan driver.
for spec in "conformance backends cuda,wgpu conformance-backends" "w4a8-cuda backend - cuda-backend" \
  "w4a8-wgpu exact - wgpu-exact" "w4a8-wgpu tiled - wgpu-tiled"; do
  read -r pkg test features name <<<"$spec"
  [ "$features" = - ] && features=
  exe=$(test_binary "$pkg" "$test" "$features")
  [ -n "$exe" ] || { echo "could not build test $test of $pkg" >&2; exit 1; }
  cp "$exe" "$dev/bin/$name"
done
cargo build --release --features cuda,wgpu --bin w4a8
cargo build --release -p w4a8-benches --features cuda,wgpu --bin w4a8-bench
cp target/release/w4a8 target/release/w4a8-bench "$dev/bin/"
strip "$dev"/bin/*

# Every carried binary must start here (no GPU: they list their tests or print their help).
"$dev/bin/conformance-backends" --list >/dev/null
"$dev/bin/cuda-backend" --list >/dev/null
"$dev/bin/wgpu-exact" --list >/dev/null
"$dev/bin/wgpu-tiled" --list >/dev/null
"$dev/bin/w4a8" --help >/dev/null
"$dev/bin/w4a8-bench" --help >/dev/null
echo "binaries start: $(ls "$dev/bin" | tr '\n' ' ')"

# Compressed: the binaries are most of what travels, and xz shrinks them about 4x.
tar -C "$dev" -cJf "$dev/bin.tar.xz" bin && rm -rf "$dev/bin"
{ git rev-parse HEAD; git diff --quiet HEAD -- . ':!benches/RESULTS.md' || echo "(with uncommitted changes)"; } \
  > "$dev/commit"

# The Vulkan loader and GL/EGL dispatch libraries (GPU.md) as amd64 packages, unpacked by device-run.sh.
opts='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/w4a8-amd64'
mkdir -p /tmp/w4a8-amd64/partial
apt-get $opts update -qq
(cd "$dev/gl" && apt-get $opts download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)

# What the device tool sends: tracked and untracked-not-ignored files, plus .device.
tree=$(git ls-files -co --exclude-standard -z | python3 -c 'import os,sys
print(sum(os.path.getsize(p) for p in sys.stdin.read().split("\0") if p and os.path.isfile(p)))')
carried=$(du -sb "$dev" | cut -f1)
total=$((tree + carried))
printf 'travels: %d KiB tree + %d KiB .device = %d KiB (limit 65536 KiB)\n' \
  $((tree / 1024)) $((carried / 1024)) $((total / 1024))
[ "$total" -lt $((60 << 20)) ] || { echo "over 60 MiB: the device tool refuses 64 MiB" >&2; exit 1; }
