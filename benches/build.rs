//! Records the commit the report binary is built from, for runs on machines without git (the lent GPU
//! machine gets a copy of the tree, not the repository).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=W4A8_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // Rebuild when HEAD moves: HEAD itself, the branch ref it names, and packed refs.
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
    }
    let head = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=W4A8_BUILD_COMMIT={head}");
}
