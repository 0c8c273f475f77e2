#!/usr/bin/env bash
# Runs the MiniLM embedding example with every W4A8 linear layer on the CPU oracle and on the wgpu
# backend, and requires the printed embeddings to be identical (the conformance contract, end to end
# on a real model). Fetches the model first (scripts/fetch-minilm.sh).
#
#   scripts/check-minilm-backends.sh [extra embed flags, e.g. --method gptq --smooth adaptive]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/fetch-minilm.sh >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# W4A8_MINILM_BIN: a binary built already (CI passes the one its test run built, to avoid a rebuild).
bin="${W4A8_MINILM_BIN:-}"
if [ -z "$bin" ]; then
  cargo build -q -p w4a8-minilm
  bin="${CARGO_TARGET_DIR:-target}/debug/w4a8-minilm"
fi
texts=("W4A8 kernels run on int8 tensor cores." "The quick brown fox jumps over the lazy dog.")
for b in cpu wgpu; do
  "$bin" --backend "$b" embed "$@" "${texts[@]}" > "$out/$b.txt"
done
if ! cmp -s "$out/cpu.txt" "$out/wgpu.txt"; then
  echo "embeddings differ between the CPU oracle and wgpu:" >&2
  diff "$out/cpu.txt" "$out/wgpu.txt" | head -20 >&2
  exit 1
fi
grep '^# cosine' "$out/cpu.txt"
echo "MiniLM: identical W4A8 embeddings on cpu and wgpu ($(grep -c '^\[' "$out/cpu.txt") sentences, flags: ${*:-default})"
