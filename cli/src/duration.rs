//! Durations on the command line and in the TOML file: `500ms`, `10s`, `2m`, `1h 30m`, `7d`
//! (humantime's syntax), or a bare number of milliseconds.

/// Parses a duration into milliseconds.
pub fn parse_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration {s:?}: {e} (use e.g. 500ms, 10s, 2m, 1h 30m, 7d)")
    })?;
    u64::try_from(d.as_millis()).map_err(|_| format!("duration {s:?} is too long"))
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
        assert_eq!(parse_ms("1h 30m"), Ok(5_400_000));
        assert_eq!(parse_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_ms("1w"), Ok(7 * 86_400_000));
        for bad in ["s", "", "5 parsecs", "-3s"] {
            let error = parse_ms(bad).expect_err(bad);
            assert!(error.contains("invalid duration"), "{bad}: {error}");
        }
    }
}
