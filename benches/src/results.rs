//! `--append-results`: appends a run's section to benches/RESULTS.md from the run's own output, so that
//! no figure in the repository is typed by hand.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::markdown::{device_block, method, table};
use crate::model::Report;

/// The line in RESULTS.md after which sections are appended; a file without it is refused, so that a
/// mistyped path does not grow some other file.
pub const APPEND_MARKER: &str = "<!-- w4a8-bench --append-results adds sections below this line -->";

/// The RESULTS.md section of a run, or why the run does not belong there: a `--quick` run, a
/// backend whose timings mean nothing (CPU, lavapipe), a failed check, or no backend at all.
pub fn results_section(r: &Report) -> Result<String, String> {
    if r.config.quick {
        return Err("a --quick run measures nothing; RESULTS.md takes full runs only".into());
    }
    if r.backends.is_empty() {
        return Err("the run measured no backend".into());
    }
    for b in &r.backends {
        if let Some(why) = &b.device.meaningless {
            return Err(format!(
                "{} timings are meaningless ({why}); RESULTS.md takes real GPUs only",
                b.device.backend
            ));
        }
        let failures = b.failures();
        if !failures.is_empty() {
            return Err(format!("{} failed checks, first: {}", failures.len(), failures[0]));
        }
    }
    let devices: Vec<String> =
        r.backends.iter().map(|b| format!("{} on {}", b.device.backend, b.device.name)).collect();
    let mut s = String::new();
    let _ = writeln!(s, "## {} — {}\n", r.meta.date_utc, devices.join(", "));
    let _ = writeln!(s, "- commit: {}", r.meta.commit);
    let _ = writeln!(s, "- command: `{}`", r.meta.command);
    let _ = writeln!(s, "- tool: {}\n", r.meta.tool);
    let _ = writeln!(s, "{}\n", method(r));
    for b in &r.backends {
        let _ = writeln!(s, "### {} — {}\n", b.device.backend, b.device.name);
        s.push_str(&device_block(b));
        s.push('\n');
        s.push_str(&table(b));
        s.push('\n');
    }
    Ok(s)
}

/// Appends the run's section to `path` (which must already hold [`APPEND_MARKER`]).
pub fn append_results(path: &Path, r: &Report) -> Result<(), String> {
    let section = results_section(r)?;
    let existing = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !existing.contains(APPEND_MARKER) {
        return Err(format!("{} lacks the line `{APPEND_MARKER}`; refusing to append", path.display()));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let sep = if existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    write!(f, "{sep}{section}").map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;
    use crate::cpu::CpuBench;
    use crate::meta::RunMeta;
    use crate::run::run_backend;

    /// A real CPU run, then relabelled as if it were a full GPU run, to exercise the accepting path.
    fn run_as_if_gpu() -> Report {
        let mut config = RunConfig::quick();
        config.shapes.truncate(1);
        config.m_values = vec![2];
        let mut b = run_backend(&CpuBench::new(), &config, &mut |_| {}).unwrap();
        b.device.meaningless = None;
        config.quick = false;
        Report { meta: RunMeta::collect(), config, backends: vec![b], unavailable: Vec::new() }
    }

    fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("w4a8-results-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("RESULTS.md");
        std::fs::write(&p, contents).unwrap();
        p
    }

    #[test]
    fn refuses_quick_meaningless_and_failed_runs() {
        let good = run_as_if_gpu();
        assert!(results_section(&good).is_ok());

        let mut quick = good.clone();
        quick.config.quick = true;
        assert!(results_section(&quick).unwrap_err().contains("--quick"));

        let mut cpu = good.clone();
        cpu.backends[0].device.meaningless = Some("CPU oracle".into());
        assert!(results_section(&cpu).unwrap_err().contains("meaningless"));

        let mut failed = good.clone();
        let check = failed.backends[0].rows[0].check.as_mut().unwrap();
        check.failed = 1;
        check.first_failure = Some("Y[0,0] wrong".into());
        assert!(results_section(&failed).unwrap_err().contains("Y[0,0] wrong"));

        let mut none = good;
        none.backends.clear();
        assert!(results_section(&none).is_err());
    }

    #[test]
    fn appends_below_the_marker_only() {
        let report = run_as_if_gpu();
        let header = format!("# Results\n\n{APPEND_MARKER}\n");
        let path = temp_file("ok", &header);
        append_results(&path, &report).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&header));
        let section = &text[header.len()..];
        assert!(section.contains(&report.meta.date_utc) && section.contains(&report.meta.commit));
        assert!(section.contains("| shape N×K |") && section.contains("W4A8 per-channel"));
        // A second run appends a second section.
        append_results(&path, &report).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().matches("| shape N×K |").count(), 2);

        let other = temp_file("nomarker", "# some other file\n");
        assert!(append_results(&other, &report).unwrap_err().contains("refusing"));
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "# some other file\n");
    }

    #[test]
    fn report_json_round_trips() {
        let report = run_as_if_gpu();
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(results_section(&back), results_section(&report));
    }

    #[test]
    fn the_repository_results_file_has_the_marker() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md")).unwrap();
        assert!(text.contains(APPEND_MARKER));
    }
}
