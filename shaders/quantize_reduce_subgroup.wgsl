// quantize_reduce_subgroup.wgsl — entry point of the quantizer that reduces the row maximum with
// subgroupMax, then across subgroups through a small workgroup array. Correct for any subgroup
// size that divides the workgroup (1..256; real devices use 8..64): it never assumes a size or
// that subgroups are laid out linearly, it uses @builtin(subgroup_id) / num_subgroups.
// Appended to quantize_activations.wgsl by the host; needs Features::SUBGROUP.

var<workgroup> sg_max: array<u32, 256>;   // |x'| bits, one slot per subgroup; 256 covers size 1
var<workgroup> row_max_shared: u32;

@compute @workgroup_size(256)
fn quantize_activations_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let m = linear_workgroup(wid, nwg);
    if (m >= qp.m) { return; }
    let mine = subgroupMax(local_absmax(m, lid));
    if (sg_lane == 0u) {
        sg_max[sg_id] = mine;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var mx = 0u;
        for (var i = 0u; i < sg_count; i++) {
            mx = max(mx, sg_max[i]);
        }
        row_max_shared = mx;
    }
    let row_max = workgroupUniformLoad(&row_max_shared);
    write_row(m, lid, row_max);
}
