requires packed_4x8_integer_dot_product;

// w4a8_gemm_tiled_128.wgsl — the 128×128 size of the tiled W4A8 GEMM, whose body
// (w4a8_gemm_tiled.wgsl) follows in the module: 256 invocations, each 8 rows × 8 columns; the size
// the backend uses whenever the device allows 32 KiB of workgroup memory (lavapipe and desktop GPUs
// do).

const TG: u32 = 16u;   // invocations per tile side: tiles of 8·TG = 128 rows × 128 columns

@compute @workgroup_size(TG * TG)
fn w4a8_gemm_tiled_128(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    w4a8_gemm_tiled(lid, wid, nwg);
}
