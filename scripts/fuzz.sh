#!/usr/bin/env bash
# Fuzzes every reader of untrusted bytes (targets in fuzz/fuzz_targets) with cargo-fuzz on nightly,
# from seed corpora written by the project's own writers (core/examples/fuzz_seeds.rs: real files,
# their truncations and bit flips), and prints one markdown row per target: executions, seconds,
# coverage, corpus growth and findings. Exits non-zero if any target found a crash.
#
#   scripts/fuzz.sh --runs 1000000                 # the figures of benches/RELIABILITY.md
#   scripts/fuzz.sh --seconds 20 --sanitizer none  # CI: a short fixed budget, so the targets cannot rot
#
# Options: --runs N | --seconds S (default --seconds 60), --sanitizer address|none (default address),
# --codegen-units N (faster builds, slightly slower runs; CI uses 16), --fresh (drop what earlier
# runs added to fuzz/corpus: start from the seeds alone), then target names (default: all).
# Needs `cargo +nightly` and cargo-fuzz (`cargo install cargo-fuzz`). Builds into fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=(-max_total_time=60)
sanitizer=address
cgu=()
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) budget=(-runs="$2"); shift 2 ;;
    --seconds) budget=(-max_total_time="$2"); shift 2 ;;
    --sanitizer) sanitizer="$2"; shift 2 ;;
    --codegen-units) cgu=(--codegen-units "$2"); shift 2 ;;
    --fresh) rm -rf fuzz/corpus; shift ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Seed corpora, written fresh (libFuzzer keeps what it adds beside them in fuzz/corpus/TARGET).
cargo run -q -p w4a8-core --example fuzz_seeds -- fuzz/corpus >&2
cargo +nightly fuzz build -s "$sanitizer" "${cgu[@]}" >&2

echo "| target | executions | libFuzzer seconds | exec/s | coverage (edges / features) | corpus (seeds → after) | findings |"
echo "|---|---:|---:|---:|---|---|---|"
failed=0
for t in "${targets[@]}"; do
  seeds=$(find "fuzz/corpus/$t" -maxdepth 1 -name 'seed-*' | wc -l)
  log=$(mktemp)
  set +e
  # -max_len: room for every seed (the largest is ~6 KB) and for growth; -rss_limit_mb: libFuzzer's
  # default 2 GB, stated, so that an allocation bomb is a finding.
  cargo +nightly fuzz run -s "$sanitizer" "${cgu[@]}" "$t" "fuzz/corpus/$t" -- \
    -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 "${budget[@]}" >"$log" 2>&1
  rc=$?
  set -e
  # libFuzzer's own count and time ("Done N runs in T second(s)"; the final stats on a crash).
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
  secs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -oE '[0-9]+ second' | grep -oE '[0-9]+' | tail -1 || true)
  secs=${secs:-?}
  runs=${runs:-0}
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | sed 's/cov: \([0-9]*\) ft: \([0-9]*\)/\1 \/ \2/' || true)
  after=$(find "fuzz/corpus/$t" -maxdepth 1 -type f | wc -l)
  if [ $rc -eq 0 ]; then
    findings="none"
  else
    failed=1
    artifact=$(grep -oE 'fuzz/artifacts/[^ ]+' "$log" | head -1 || true)
    kind=$(grep -m1 -oE "(panicked at [^ ]+|ERROR: [A-Za-z]+: [a-z-]+|out-of-memory|timeout)" "$log" || echo "exit $rc")
    findings="**${kind}** ${artifact}"
    echo "---- $t log tail ----" >&2
    tail -40 "$log" >&2
  fi
  rate=$(awk -v r="$runs" -v s="$secs" 'BEGIN { if (s + 0 > 0) printf "%.0f", r / s; else print "?" }')
  printf '| %s | %s | %s | %s | %s | %s → %s | %s |\n' "$t" "$runs" "$secs" "$rate" "${cov:-?}" "$seeds" "$after" "$findings"
  rm -f "$log"
done
exit $failed
