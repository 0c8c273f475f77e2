#!/usr/bin/env bash
# Runs ONE step on a lent GPU machine, from the repository root, after scripts/device-build.sh here.
# One device `run` call per step (carry [".device"]); each step is sized to end well inside the
# tool's 10-minute limit, stops itself at $W4A8_STEP_SECONDS (default 540 s), writes at most a few
# files under $OUT/<step>/ (the tool brings back 8 files at most) and prints how long it took.
#
#   step          what                                                                 expected
#   conformance   w4a8 info (kernel plans), demos on cuda and wgpu, the conformance     2-4 min
#                 suite with W4A8_REQUIRE=cuda,wgpu, the CUDA crate's GPU tests
#   sanitize      compute-sanitizer memcheck, racecheck, synccheck on the long-K        3-6 min
#                 whole-tile and stream-K tests
#   bench-decode  the report on CUDA at M = 1, 16, 32, 64 (8 shapes x 2 granularities   4-7 min
#                 + cuBLAS FP16 + cuBLASLt INT8 = 256 cases, <= 0.5 s timing each)
#   bench-large   the same at M = 128, 256, 1024, 4096                                  4-7 min
#   vulkan        exactness and tiled tests, then the report on wgpu through NVIDIA's
#                 Vulkan driver, 4 shapes                                                3-5 min
#   profile       Nsight Compute on the decode kernels (M = 1 and 16 on 8192x8192)       1-3 min
#
# Then, here: w4a8-bench --append-results benches/RESULTS.md --from-json <fetched report.json>.
set -uo pipefail
step="${1:-}"
case "$step" in
  conformance | sanitize | bench-decode | bench-large | vulkan | profile) ;;
  *) echo "usage: $0 conformance|sanitize|bench-decode|bench-large|vulkan|profile" >&2; exit 2 ;;
esac
start=$(date +%s)
OUT="${OUT:-/tmp/w4a8-out}"
out="$OUT/$step"
mkdir -p "$out"
log="$out/$step.log"
limit="${W4A8_STEP_SECONDS:-540}"
# Seconds left of the step's budget, at least 1 (timeout 0 would mean no limit at all).
remaining() { local r=$((limit - ($(date +%s) - start))); echo $((r > 0 ? r : 1)); }
# Runs a command under the step's remaining time, its output appended to the step log.
run() {
  echo "\$ $*" | tee -a "$log"
  timeout --signal=INT --kill-after=10 "$(remaining)" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "[exit $rc after $(($(date +%s) - start)) s]" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=1
}
failed=0

# The binaries (built here by device-build.sh) and the Vulkan loader set.
bin=/tmp/w4a8-bin
[ -x "$bin/w4a8" ] || { mkdir -p "$bin" && tar -C "$bin" --strip-components=1 -xJf .device/bin.tar.xz; }
for f in .device/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
# cudarc loads libnvrtc/libcublas/libcublasLt by name: put the folders that hold them on the path.
libdirs=$(find / -xdev \( -name 'libnvrtc.so.1[23]' -o -name 'libcublas.so.1[23]' -o -name 'libcublasLt.so.1[23]' \) \
  -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export W4A8_COMMIT="$(head -n1 .device/commit)" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
{
  echo "step $step, commit $(tr '\n' ' ' <.device/commit)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
} 2>&1 | tee "$log"

bench() { run "$bin/w4a8-bench" --max-case-seconds 0.5 --out "$out" "$@"; }
case "$step" in
  conformance)
    run "$bin/w4a8" info --plan 1x4096x4096 --plan 16x8192x28672:g128 --plan 128x4096x4096:pc --plan 4096x57344x8192
    run "$bin/w4a8" demo --backend cuda --m 1 --n 8192 --k 8192
    run "$bin/w4a8" demo --backend cuda --m 300 --n 4096 --k 4096 --group 0
    run "$bin/w4a8" demo --backend wgpu --m 16 --n 4096 --k 4096
    W4A8_REQUIRE=cuda run "$bin/cuda-backend" --test-threads 1
    W4A8_REQUIRE=cuda,wgpu W4A8_CASES=4 run "$bin/conformance-backends"
    ;;
  sanitize)
    command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not found" | tee -a "$log"; exit 1; }
    # Long K in whole tiles (every pipeline slot recycled) under all three tools; the
    # stream-K grids (partial sums, semaphores) under memcheck.
    for tool in memcheck racecheck synccheck; do
      W4A8_REQUIRE=cuda run compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$bin/cuda-backend" long_k_in_whole_tiles --test-threads 1
    done
    W4A8_REQUIRE=cuda run compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$bin/cuda-backend" stream_k_grids --test-threads 1
    grep -h "ERROR SUMMARY" "$log" | sort | uniq -c | tee -a "$log"
    ;;
  bench-decode) bench --backend cuda --m 1,16,32,64 ;;
  bench-large) bench --backend cuda --m 128,256,1024,4096 ;;
  vulkan)
    # Exact on NVIDIA's driver: soft-float and epilogue against the CPU, the tiled kernels' tails.
    W4A8_REQUIRE=wgpu run "$bin/wgpu-exact"
    W4A8_REQUIRE=wgpu run "$bin/wgpu-tiled"
    bench --backend wgpu --m 1,16,128,1024 --shapes 4096x4096,8192x8192,4096x11008,8192x28672
    ;;
  profile)
    command -v ncu >/dev/null || { echo "ncu not found" | tee -a "$log"; exit 1; }
    for m in 1 16; do
      run ncu --kernel-name regex:w4a8_gemm --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section SchedulerStats --section LaunchStats --section Occupancy \
        "$bin/w4a8" demo --backend cuda --m "$m" --n 8192 --k 8192 --iters 3
    done
    ;;
esac
echo "step $step: $(($(date +%s) - start)) s, $([ $failed -eq 0 ] && echo ok || echo FAILED)" | tee -a "$log"
exit $failed
