//! Weight files are replaced atomically: a failed or interrupted write leaves the previous file, not a
//! truncated one (the interrupted case, a process killed mid-write, is in the CLI tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use w4a8_core::io::{Layer, load_layers, save_layers, write_file_atomically};
use w4a8_core::quantize::quantize_weights_rtn;
use w4a8_core::{Error, Granularity};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("w4a8-atomic-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn layers(seed: usize) -> BTreeMap<String, Layer> {
    let w: Vec<f32> = (0..8 * 64).map(|i| ((i * 31 + seed) % 17) as f32 - 8.0).collect();
    let q = quantize_weights_rtn(&w, 8, 64, Granularity::PerGroup { group_size: 32 }, None).unwrap();
    BTreeMap::from([(format!("layer{seed}"), Layer::from(q))])
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn saving_over_a_file_replaces_it_and_leaves_no_temporary() {
    let dir = temp_dir("replace");
    let path = dir.join("w.safetensors");
    save_layers(&path, &layers(1)).unwrap();
    save_layers(&path, &layers(2)).unwrap();
    assert_eq!(load_layers(&path).unwrap(), layers(2));
    assert_eq!(entries(&dir), ["w.safetensors"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_write_leaves_the_destination_as_it_was() {
    let dir = temp_dir("fail");
    // The destination is a non-empty directory: the rename onto it fails after the bytes were
    // written to the temporary file. The error names the path; the temporary file is removed.
    let target = dir.join("out.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"untouched").unwrap();
    let e = save_layers(&target, &layers(3)).unwrap_err();
    assert!(matches!(e, Error::Io { ref path, .. } if path.contains("out.safetensors")), "{e:?}");
    assert_eq!(entries(&dir), ["out.safetensors"], "the temporary file was left behind");
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"untouched");
    // A folder that does not exist: nothing is created anywhere.
    let missing = dir.join("no/such/folder/w.safetensors");
    assert!(matches!(save_layers(&missing, &layers(3)), Err(Error::Io { .. })));
    assert!(!dir.join("no").exists());
    // A path that names no file.
    assert!(matches!(write_file_atomically(Path::new("/"), b"x"), Err(Error::Io { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_writers_of_one_path_never_mix_their_files() {
    let dir = temp_dir("race");
    let path = dir.join("w.safetensors");
    std::thread::scope(|s| {
        for t in 0..8 {
            let path = &path;
            s.spawn(move || {
                for _ in 0..5 {
                    save_layers(path, &layers(t)).unwrap();
                }
            });
        }
    });
    // Whoever renamed last won, whole: the file is exactly one writer's layers.
    let got = load_layers(&path).unwrap();
    assert!((0..8).any(|t| got == layers(t)), "a mixed file: {:?}", got.keys());
    assert_eq!(entries(&dir), ["w.safetensors"]);
    let _ = std::fs::remove_dir_all(&dir);
}
