// quantize_reduce_shared.wgsl — entry point of the quantizer that reduces the row maximum through
// workgroup memory (a tree over 256 slots); works on every adapter. Appended to
// quantize_activations.wgsl by the host.

var<workgroup> red: array<u32, 256>;   // |x'| bits, one slot per invocation (QUANT_WG)

@compute @workgroup_size(256)
fn quantize_activations(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = linear_workgroup(wid, nwg);
    if (m >= qp.m) { return; }            // uniform per workgroup: padding of a 2-D dispatch
    red[lid] = local_absmax(m, lid);
    workgroupBarrier();
    // Halving tree: 128, 64, ..., 1 active slots; a max is exact, so the order is irrelevant.
    for (var step = 128u; step > 0u; step >>= 1u) {
        if (lid < step) {
            red[lid] = max(red[lid], red[lid + step]);
        }
        workgroupBarrier();
    }
    let row_max = red[0];
    write_row(m, lid, row_max);
}
