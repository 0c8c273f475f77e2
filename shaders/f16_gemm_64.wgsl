requires packed_4x8_integer_dot_product;

// f16_gemm_64.wgsl — the 64×64 size of our f16 GEMM baseline, whose body (f16_gemm.wgsl) follows in
// the module: 64 invocations, each 8 rows × 8 columns; the fallback for devices that allow only 16
// KiB of workgroup memory (WebGPU's default limit).

const TG: u32 = 8u;   // invocations per tile side: tiles of 8·TG = 64 rows × 64 columns

@compute @workgroup_size(TG * TG)
fn f16_gemm_tiled_64(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    f16_gemm_tiled(lid, wid, nwg);
}
