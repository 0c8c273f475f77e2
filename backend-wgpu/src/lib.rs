//! WGSL backend (in progress).
