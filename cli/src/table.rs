//! Plain-text tables for people, and text from the network made safe to show.

use std::borrow::Cow;

/// Whether a character could act on a terminal instead of being shown: C0 and C1 controls
/// (escape sequences, carriage returns, bells) and the Unicode marks that reorder text.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text that came over the network (logs, results, names, tags) as it is safe to print: every
/// character that could act on the terminal is shown escaped (`\n`, `\u{1b}`), so nothing a job
/// printed can move the cursor, change colours or rewrite what the operator sees. `--json`
/// output keeps the text as data instead.
pub fn safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if acts_on_terminal(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Renders rows under a header, each column as wide as its widest cell. Every cell is made
/// [`safe`] first.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| safe(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

/// A time in milliseconds as RFC 3339 UTC, or `-`.
pub fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

pub fn opt(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = render(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["100".into(), "bb".into()],
            ],
        );
        assert_eq!(t, "ID   NAME\n1    a\n100  bb");
        assert_eq!(time(Some(0)), "1970-01-01 00:00:00.000Z");
        assert_eq!(time(None), "-");
    }

    #[test]
    fn terminal_controls_are_shown_escaped() {
        assert_eq!(safe("plain text: ünïcode"), "plain text: ünïcode");
        assert_eq!(safe("\u{1b}[31mred\u{1b}[0m"), "\\u{1b}[31mred\\u{1b}[0m");
        assert_eq!(safe("a\nb\rc\td\u{7}"), "a\\nb\\rc\\td\\u{7}");
        assert_eq!(safe("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(safe("\u{9b}2J"), "\\u{9b}2J");
        let t = render(&["A"], &[vec!["\u{1b}]0;title\u{7}".into()]]);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
    }
}
