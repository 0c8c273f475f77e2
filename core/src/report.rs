//! Generated sections of shared markdown reports.
//!
//! Several tools write into one file (`benches/QUALITY.md` holds the MiniLM and the SmolLM2 tables):
//! each owns the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` and rewrites only that, so
//! regenerating one table never drops another.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::write_file_atomically;

/// The markers that open and close section `name`.
pub fn section_markers(name: &str) -> (String, String) {
    (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"))
}

/// Puts `section` between the markers of `name` in `doc`, replacing what was there; appends the
/// markers at the end when absent (or out of order). Everything outside them is kept byte for byte.
pub fn replace_section(doc: &str, name: &str, section: &str) -> String {
    let (begin, end) = section_markers(name);
    let block = format!("{begin}\n{}\n{end}", section.trim_end());
    let b = doc.find(&begin);
    // The end marker that closes this begin marker, not an earlier stray one.
    let e = b.and_then(|b| doc[b..].find(&end).map(|e| b + e));
    match (b, e) {
        (Some(b), Some(e)) => format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]),
        _ => {
            let sep = if doc.is_empty() || doc.ends_with("\n\n") {
                ""
            } else if doc.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{doc}{sep}{block}\n")
        }
    }
}

/// Writes `section` into section `name` of the markdown file at `path` (created when missing),
/// atomically: a crash leaves the previous file.
pub fn write_section(path: &Path, name: &str, section: &str) -> Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(Error::Io { path: path.display().to_string(), source }),
    };
    write_file_atomically(path, replace_section(&doc, name, section).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_section_is_replaced() {
        let (b, e) = section_markers("t");
        let doc = "# Title\n\nkeep me\n";
        let once = replace_section(doc, "t", "table 1");
        assert_eq!(once, format!("# Title\n\nkeep me\n\n{b}\ntable 1\n{e}\n"));
        let twice = replace_section(&format!("{once}after\n"), "t", "table 2\n");
        assert_eq!(twice, format!("# Title\n\nkeep me\n\n{b}\ntable 2\n{e}\nafter\n"));
        assert_eq!(replace_section("", "t", "x"), format!("{b}\nx\n{e}\n"));
        // Another tool's section, before and after, is kept as it was.
        let (ob, oe) = section_markers("other");
        let doc = format!("{ob}\nA\n{oe}\n{b}\nold\n{e}\n{ob}x{oe}\n");
        assert_eq!(replace_section(&doc, "t", "new"), format!("{ob}\nA\n{oe}\n{b}\nnew\n{e}\n{ob}x{oe}\n"));
        // A stray end marker before the begin marker is text, not the section's end.
        let doc = format!("{e}\n{b}\nold\n{e}\n");
        assert_eq!(replace_section(&doc, "t", "new"), format!("{e}\n{b}\nnew\n{e}\n"));
    }

    #[test]
    fn write_section_creates_and_then_rewrites_the_file() {
        let dir = std::env::temp_dir().join(format!("w4a8-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.md");
        let _ = std::fs::remove_file(&path);
        write_section(&path, "a", "one").unwrap();
        write_section(&path, "b", "two").unwrap();
        write_section(&path, "a", "three").unwrap();
        let (ab, ae) = section_markers("a");
        let (bb, be) = section_markers("b");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{ab}\nthree\n{ae}\n\n{bb}\ntwo\n{be}\n")
        );
        assert!(matches!(write_section(&dir, "a", "x"), Err(Error::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
