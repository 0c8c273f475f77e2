//! The report binary end to end on the CPU oracle: the files it writes, its refusals, its exit codes.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_w4a8-bench"))
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("w4a8-bench-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn quick_cpu_run_writes_table_json_and_plot() {
    let out = out_dir("quick");
    let o = bin()
        .args(["--quick", "--backend", "cpu", "--shapes", "72x128,200x384", "--m", "1,5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("Timings below are meaningless"), "{stdout}");
    // 2 shapes × 2 M × (2 granularities + 2 peers) rows, every one checked.
    let rows: Vec<&str> =
        stdout.lines().filter(|l| l.starts_with("| 72×128") || l.starts_with("| 200×384")).collect();
    assert_eq!(rows.len(), 16, "{stdout}");
    assert!(rows.iter().all(|r| r.contains("| ok ")), "{stdout}");
    // Both times, and a plan for each W4A8 row (P-numbers, each listed under the table).
    assert!(stdout.contains("| kernel µs | call µs |"), "{stdout}");
    let w4a8_rows: Vec<&&str> = rows.iter().filter(|r| r.contains("W4A8")).collect();
    assert_eq!(w4a8_rows.len(), 8);
    assert!(w4a8_rows.iter().all(|r| r.contains("| P")), "{stdout}");
    assert!(stdout.contains("- P1: `oracle gemm_int8"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let json_rows = json["backends"][0]["rows"].as_array().unwrap();
    assert_eq!(json_rows.len(), 16);
    for r in json_rows {
        assert!(r["kernel_time"]["median_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["call_time"]["median_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["plan"].is_string(), r["kind"].get("W4A8").is_some(), "{r}");
    }
    assert!(json["meta"]["command"].as_str().unwrap().contains("--quick"));
    let svg = std::fs::read_to_string(out.join("speedup-cpu.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("vs FP16"));
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap().trim(), stdout.trim());

    // Such a run is refused by --append-results, from its JSON, and the file is left alone.
    let results = out.join("RESULTS.md");
    let header = format!("# r\n\n{}\n", w4a8_benches::results::APPEND_MARKER);
    std::fs::write(&results, &header).unwrap();
    let o = bin()
        .arg("--append-results")
        .arg(&results)
        .arg("--from-json")
        .arg(out.join("report.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--quick"));
    assert_eq!(std::fs::read_to_string(&results).unwrap(), header);
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    for args in [
        &["--backend", "tpu", "--quick"][..],
        &["--quick", "--backend", "cpu", "--granularity", "g100"],
        &["--quick", "--backend", "cpu", "--m", "0"],
        &["--quick", "--backend", "cpu", "--shapes", "12x"],
    ] {
        let o = bin().args(args).arg("--out").arg(out_dir("bad")).output().unwrap();
        assert!(matches!(o.status.code(), Some(2)), "{args:?}: {:?}", o.status);
    }
}
