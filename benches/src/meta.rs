//! What a run records about itself: date, commit, command line.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Date, commit and command of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// UTC, `YYYY-MM-DD HH:MM:SS UTC`.
    pub date_utc: String,
    /// The commit measured, and where that fact came from.
    pub commit: String,
    /// The command line as typed (shell-quoted where needed).
    pub command: String,
    /// This tool's version.
    pub tool: String,
}

impl RunMeta {
    /// Collects the metadata of the current process.
    pub fn collect() -> Self {
        RunMeta {
            date_utc: utc_now(),
            commit: commit(),
            command: command_line(std::env::args()),
            tool: format!("w4a8-bench {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The commit: `W4A8_COMMIT` if set (a device machine without git), else `git rev-parse HEAD` in the
/// current directory (with `-dirty` when tracked files differ), else the commit the binary was built
/// from (recorded by build.rs), else `unknown`.
pub fn commit() -> String {
    if let Ok(c) = std::env::var("W4A8_COMMIT")
        && !c.trim().is_empty()
    {
        return format!("{} (from W4A8_COMMIT)", c.trim());
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(head) = git(&["rev-parse", "HEAD"]).filter(|h| !h.is_empty()) {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        return if dirty { format!("{head}-dirty") } else { head };
    }
    match option_env!("W4A8_BUILD_COMMIT") {
        Some(c) if !c.is_empty() => {
            format!("{c} (HEAD when the binary was built; uncommitted changes not detected)")
        }
        _ => "unknown".into(),
    }
}

/// Joins arguments into one line, single-quoting any that a shell would split or expand.
pub fn command_line(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            // Show the program by its file name, not the build directory it ran from.
            let a = if i == 0 { a.rsplit('/').next().unwrap_or(&a).to_string() } else { a };
            let plain =
                !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain { a } else { format!("'{}'", a.replace('\'', r"'\''")) }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`: eras of 400 years = 146 097 days, years starting in March).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_709_251_199), "2024-02-29 23:59:59 UTC");
        assert_eq!(format_utc(4_102_444_800), "2100-01-01 00:00:00 UTC");
    }

    #[test]
    fn command_lines_are_quoted_where_needed() {
        let args =
            ["/x/target/release/w4a8-bench", "--shapes", "4096x4096,8192x8192", "--out", "a b", "it's"];
        assert_eq!(
            command_line(args.iter().map(|s| s.to_string())),
            r"w4a8-bench --shapes 4096x4096,8192x8192 --out 'a b' 'it'\''s'"
        );
    }
}
