#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, after scripts/device-build.sh here:
# conformance with CUDA and wgpu required, compute-sanitizer over a CUDA sample, then the full
# benchmark report. Everything goes to $OUT (the device tool brings it back).
set -uo pipefail
OUT="${OUT:-/tmp/w4a8-out}"; mkdir -p "$OUT"
for f in .device/gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
libdirs=$(find / \( -name 'libnvrtc.so.13' -o -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export W4A8_COMMIT="$(cat .device/commit)"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } | tee "$OUT/device.txt"
W4A8_REQUIRE=cuda,wgpu W4A8_CASES=4 .device/conformance-backends 2>&1 | tee "$OUT/conformance.txt"
if command -v compute-sanitizer >/dev/null; then
  W4A8_REQUIRE=cuda compute-sanitizer --error-exitcode 9 .device/conformance-backends cuda:: --test-threads 1 2>&1 \
    | tail -n 40 | tee "$OUT/sanitizer.txt"
fi
.device/w4a8-bench --backend cuda,wgpu --out "$OUT/bench" 2>&1 | tee "$OUT/bench.txt"
