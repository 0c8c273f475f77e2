requires packed_4x8_integer_dot_product;

// f16_gemm_128.wgsl — the 128×128 size of our f16 GEMM baseline, whose body (f16_gemm.wgsl) follows
// in the module: 256 invocations, each 8 rows × 8 columns; the size the backend uses whenever the
// device allows 32 KiB of workgroup memory (lavapipe and desktop GPUs do).

const TG: u32 = 16u;   // invocations per tile side: tiles of 8·TG = 128 rows × 128 columns

@compute @workgroup_size(TG * TG)
fn f16_gemm_tiled_128(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    f16_gemm_tiled(lid, wid, nwg);
}
