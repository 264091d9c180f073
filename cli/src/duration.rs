//! Durations on the command line: `500ms`, `10s`, `2m`, `1h`, `7d`, or a bare number of milliseconds.

/// Parses a duration into milliseconds.
pub fn parse_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 10s, 2m, 1h, 7d"))?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?}: use ms, s, m or h"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn units() {
        assert_eq!(parse_ms("250"), Ok(250));
        assert_eq!(parse_ms("250ms"), Ok(250));
        assert_eq!(parse_ms("3s"), Ok(3_000));
        assert_eq!(parse_ms("2m"), Ok(120_000));
        assert_eq!(parse_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_ms("7d"), Ok(7 * 86_400_000));
        assert!(parse_ms("1w").is_err());
        assert!(parse_ms("s").is_err());
        assert!(parse_ms("").is_err());
    }
}
