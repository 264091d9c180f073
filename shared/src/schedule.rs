//! How a job is timed, and when it fires next. Times are milliseconds since the Unix epoch (UTC).

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How a job is timed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Schedule {
    /// Runs only when asked (`rota job run` or the API).
    Api,
    /// A CRON expression with an optional seconds field, in an IANA time zone (default UTC).
    Cron {
        expression: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_zone: Option<String>,
    },
    /// Runs once, at the given instant.
    At { at_ms: i64 },
    /// A frequent job fired every `interval_ms`, measured from start to start.
    FixedRate { interval_ms: u64 },
    /// A frequent job fired `interval_ms` after the previous run ended.
    FixedDelay { interval_ms: u64 },
}

/// Why a schedule cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("invalid CRON expression {expression:?}: {reason}")]
    InvalidCron { expression: String, reason: String },
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Berlin")]
    UnknownTimeZone(String),
    #[error("interval must be at least {min} ms, got {got}")]
    IntervalTooShort { min: u64, got: u64 },
    #[error("no fire time can be computed: {0}")]
    Unschedulable(String),
}

/// The shortest interval of a fixed-rate or fixed-delay job.
pub const MIN_INTERVAL_MS: u64 = 50;

impl Schedule {
    /// A short name, as stored in the database.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Cron { .. } => "cron",
            Self::At { .. } => "at",
            Self::FixedRate { .. } => "fixed_rate",
            Self::FixedDelay { .. } => "fixed_delay",
        }
    }

    /// Frequent jobs run as one long-lived instance on a worker.
    pub fn is_frequent(&self) -> bool {
        matches!(self, Self::FixedRate { .. } | Self::FixedDelay { .. })
    }

    /// Checks the schedule without computing anything time-dependent.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match self {
            Self::Api | Self::At { .. } => Ok(()),
            Self::Cron {
                expression,
                time_zone,
            } => {
                parse_cron(expression)?;
                parse_time_zone(time_zone.as_deref())?;
                Ok(())
            }
            Self::FixedRate { interval_ms } | Self::FixedDelay { interval_ms } => {
                if *interval_ms < MIN_INTERVAL_MS {
                    Err(ScheduleError::IntervalTooShort {
                        min: MIN_INTERVAL_MS,
                        got: *interval_ms,
                    })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The first fire time strictly after `after_ms`, within the lifecycle window, or `None` when
    /// the job never fires again (API jobs, a one-shot in the past, a lifecycle that has ended).
    pub fn next_fire_after(
        &self,
        after_ms: i64,
        lifecycle: Lifecycle,
    ) -> Result<Option<i64>, ScheduleError> {
        // Before the lifecycle starts, look for fires from its start on.
        let after_ms = match lifecycle.start_ms {
            Some(start) if after_ms < start => start - 1,
            _ => after_ms,
        };
        let next = match self {
            Self::Api => None,
            Self::At { at_ms } => (*at_ms > after_ms).then_some(*at_ms),
            Self::Cron {
                expression,
                time_zone,
            } => {
                let cron = parse_cron(expression)?;
                let tz = parse_time_zone(time_zone.as_deref())?;
                if names_wall_times(expression) {
                    next_wall_fire(&cron, tz, after_ms)?
                } else {
                    next_cron_fire(&cron, tz, after_ms)?
                }
            }
            // A frequent job's one long-lived instance starts as soon as it may; the interval is
            // applied on the worker, by its frequent tracker.
            Self::FixedRate { .. } | Self::FixedDelay { .. } => Some(after_ms.saturating_add(1)),
        };
        Ok(next.filter(|t| lifecycle.end_ms.is_none_or(|end| *t <= end)))
    }
}

/// The window in which a job may fire. Both ends are inclusive and optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<i64>,
}

fn parse_cron(expression: &str) -> Result<Cron, ScheduleError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|e| ScheduleError::InvalidCron {
            expression: expression.to_owned(),
            reason: e.to_string(),
        })
}

fn parse_time_zone(name: Option<&str>) -> Result<Tz, ScheduleError> {
    match name {
        None | Some("") => Ok(Tz::UTC),
        Some(name) => name
            .parse::<Tz>()
            .map_err(|_| ScheduleError::UnknownTimeZone(name.to_owned())),
    }
}

/// Whether the expression's second, minute and hour fields all name explicit values (numbers,
/// lists, ranges; no `*` and no step): the job then means wall-clock times of its zone, and
/// daylight saving is applied to them by [`next_wall_fire`]. Other expressions (every 15
/// minutes, every second) mean real time, and their fires follow the clock across a change.
fn names_wall_times(expression: &str) -> bool {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let time_of_day: &[&str] = match fields.len() {
        // minute hour day month weekday: the second is 0.
        5 => &fields[..2],
        6 | 7 => &fields[..3],
        _ => return false,
    };
    time_of_day.iter().all(|f| {
        f.bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
    })
}

fn utc_at(ms: i64) -> Result<DateTime<Utc>, ScheduleError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| ScheduleError::Unschedulable(format!("time {ms} ms is out of range")))
}

/// How many of a pattern's wall times one search looks at: enough to cross a repeated hour of a
/// pattern with a value every second.
const WALL_STEPS: usize = 10_000;

/// The first fire strictly after `after_ms` of a pattern that names wall times. The pattern is
/// walked in wall time (as if the zone had no daylight saving, so that every wall time occurs
/// exactly once), and each wall time is placed on the zone's clock: one that falls in a gap (the
/// clocks jumped over it) fires once, at the first instant after the gap; one that occurs twice
/// (the clocks were set back) fires once, at its first occurrence.
fn next_wall_fire(cron: &Cron, tz: Tz, after_ms: i64) -> Result<Option<i64>, ScheduleError> {
    let local_after = utc_at(after_ms)?.with_timezone(&tz).naive_local();
    let mut wall = Utc.from_utc_datetime(&local_after);
    for _ in 0..WALL_STEPS {
        // `Err` means the pattern never matches again (`0 0 0 30 2 *`).
        let Ok(next) = cron.find_next_occurrence(&wall, false) else {
            return Ok(None);
        };
        let at = match tz.from_local_datetime(&next.naive_utc()) {
            LocalResult::Single(t) => t.timestamp_millis(),
            LocalResult::Ambiguous(first, second) => {
                first.timestamp_millis().min(second.timestamp_millis())
            }
            LocalResult::None => first_instant_after_gap(tz, next.naive_utc()),
        };
        // A wall time whose (first) instant is not after `after_ms` has fired already: the
        // second pass of a repeated hour, or a gap's instant shared with the wall time after it.
        if at > after_ms {
            return Ok(Some(at));
        }
        wall = next;
    }
    Ok(None)
}

/// The first instant whose wall time in `tz` is later than `wall`, a wall time the zone's
/// clocks jumped over: the instant of the jump. Gaps of any length are found (a zone that skipped
/// a whole day, as Samoa did in 2011): local time runs monotonically within the searched ±50
/// hours around it.
fn first_instant_after_gap(tz: Tz, wall: NaiveDateTime) -> i64 {
    let wall_as_utc = wall.and_utc().timestamp();
    let (mut lo, mut hi) = (wall_as_utc - 50 * 3600, wall_as_utc + 50 * 3600);
    let later = |t: i64| {
        Utc.timestamp_opt(t, 0)
            .single()
            .is_some_and(|u| u.with_timezone(&tz).naive_local() > wall)
    };
    // `later(lo)` is false and `later(hi)` true; find the first second where it turns true.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if later(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi * 1000
}

/// How many times a real-time pattern's search is resumed a day later when it finds nothing: a
/// zone's clocks can jump over a whole day, where such a search gives up.
const REAL_TIME_RETRIES: i64 = 3;

/// The first fire strictly after `after_ms` of a real-time pattern (every 15 minutes, every
/// second): croner finds the next instant whose wall time matches. CRON fires on whole seconds.
fn next_cron_fire(cron: &Cron, tz: Tz, after_ms: i64) -> Result<Option<i64>, ScheduleError> {
    let whole_second = after_ms.div_euclid(1000);
    for day in 0..=REAL_TIME_RETRIES {
        let from = utc_at((whole_second + day * 86_400) * 1000)?;
        let from: DateTime<Tz> = from.with_timezone(&tz);
        if let Ok(next) = cron.find_next_occurrence(&from, false) {
            return Ok(Some(next.timestamp_millis()));
        }
    }
    // Patterns such as `0 0 30 2 *` never match; a job with one is refused at creation.
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expr: &str, tz: &str) -> Schedule {
        Schedule::Cron {
            expression: expr.to_owned(),
            time_zone: Some(tz.to_owned()),
        }
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    /// All fires in `[from, to)`.
    fn fires(s: &Schedule, from: &str, to: &str) -> Vec<i64> {
        let (mut t, end) = (ms(from) - 1, ms(to));
        let mut out = Vec::new();
        while let Some(next) = s.next_fire_after(t, Lifecycle::default()).unwrap() {
            if next >= end {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    #[test]
    fn seconds_field_is_optional() {
        let every_second = cron("* * * * * *", "UTC");
        let t = ms("2026-01-01T00:00:00.250Z");
        assert_eq!(
            every_second
                .next_fire_after(t, Lifecycle::default())
                .unwrap(),
            Some(ms("2026-01-01T00:00:01Z"))
        );
        let every_minute = cron("* * * * *", "UTC");
        assert_eq!(
            every_minute
                .next_fire_after(t, Lifecycle::default())
                .unwrap(),
            Some(ms("2026-01-01T00:01:00Z"))
        );
    }

    #[test]
    fn new_york_spring_forward_fires_once_at_the_right_instant() {
        // 2026-03-08: at 02:00 EST clocks jump to 03:00 EDT, so 02:30 does not exist that day.
        // The fire moves to 03:00 EDT (07:00Z) and happens exactly once.
        let s = cron("0 30 2 * * *", "America/New_York");
        let got = fires(&s, "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00");
        assert_eq!(got, vec![ms("2026-03-08T03:00:00-04:00")]);
        // The days around it fire at 02:30 local time.
        let before = fires(&s, "2026-03-07T00:00:00-05:00", "2026-03-08T00:00:00-05:00");
        assert_eq!(before, vec![ms("2026-03-07T02:30:00-05:00")]);
        let after = fires(&s, "2026-03-09T00:00:00-04:00", "2026-03-10T00:00:00-04:00");
        assert_eq!(after, vec![ms("2026-03-09T02:30:00-04:00")]);
    }

    #[test]
    fn new_york_fall_back_fires_once_at_the_right_instant() {
        // 2026-11-01: at 02:00 EDT clocks fall back to 01:00 EST, so 01:30 happens twice.
        // The job fires once, at the first 01:30 (EDT, 05:30Z).
        let s = cron("0 30 1 * * *", "America/New_York");
        let got = fires(&s, "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00");
        assert_eq!(got, vec![ms("2026-11-01T01:30:00-04:00")]);
    }

    #[test]
    fn several_wall_times_keep_their_runs_across_daylight_saving() {
        // New York, 2026-03-08: 02:30 does not exist; it runs once at 03:00 EDT, and 14:30 too.
        let s = cron("0 30 2,14 * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"),
            vec![
                ms("2026-03-08T03:00:00-04:00"),
                ms("2026-03-08T14:30:00-04:00")
            ]
        );
        // 2026-11-01: 01:30 occurs twice; it runs once, at the first.
        let s = cron("0 30 1,14 * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00"),
            vec![
                ms("2026-11-01T01:30:00-04:00"),
                ms("2026-11-01T14:30:00-05:00")
            ]
        );
        // Berlin, 2026-03-29: 02:00 and 02:30 both fall in the gap: one run at 03:00 CEST.
        let s = cron("0 0,30 2 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
            vec![ms("2026-03-29T03:00:00+02:00")]
        );
        // 2026-10-25: 02:00 to 02:59 occur twice; 02:00 and 02:30 run once each.
        assert_eq!(
            fires(&s, "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),
            vec![
                ms("2026-10-25T02:00:00+02:00"),
                ms("2026-10-25T02:30:00+02:00")
            ]
        );
        // A ten-second list inside the repeated hour runs once per wall time.
        let s = cron("0,10,20 30 1 * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00").len(),
            3
        );
    }

    #[test]
    fn a_skipped_day_does_not_stop_the_job() {
        // Samoa skipped 2011-12-30 entirely (UTC-10 to UTC+14). The 09:00 of the missing day
        // runs at the first instant after the gap, and the job goes on.
        let s = cron("0 0 9 * * *", "Pacific/Apia");
        assert_eq!(
            fires(&s, "2011-12-29T00:00:00-10:00", "2012-01-01T00:00:00+14:00"),
            vec![
                ms("2011-12-29T09:00:00-10:00"),
                ms("2011-12-31T00:00:00+14:00"),
                ms("2011-12-31T09:00:00+14:00"),
            ]
        );
        // A real-time pattern follows the clock through the same day.
        let hourly = cron("0 0 */6 * * *", "Pacific/Apia");
        assert_eq!(
            fires(
                &hourly,
                "2011-12-29T12:00:00-10:00",
                "2011-12-31T12:00:01+14:00"
            ),
            vec![
                ms("2011-12-29T12:00:00-10:00"),
                ms("2011-12-29T18:00:00-10:00"),
                ms("2011-12-31T00:00:00+14:00"),
                ms("2011-12-31T06:00:00+14:00"),
                ms("2011-12-31T12:00:00+14:00"),
            ]
        );
    }

    #[test]
    fn real_time_patterns_keep_real_time_across_daylight_saving() {
        // Every 30 minutes on the spring-forward night: 01:00, 01:30, then 03:00 EDT.
        let s = cron("0 */30 * * * *", "America/New_York");
        assert_eq!(
            fires(&s, "2026-03-08T01:00:00-05:00", "2026-03-08T03:31:00-04:00"),
            vec![
                ms("2026-03-08T01:00:00-05:00"),
                ms("2026-03-08T01:30:00-05:00"),
                ms("2026-03-08T03:00:00-04:00"),
                ms("2026-03-08T03:30:00-04:00"),
            ]
        );
    }

    #[test]
    fn a_pattern_that_never_matches_has_no_next_fire() {
        let s = cron("0 0 0 30 2 *", "UTC");
        assert_eq!(s.next_fire_after(0, Lifecycle::default()).unwrap(), None);
        assert!(names_wall_times("0 0 0 30 2 *"));
        assert!(names_wall_times("30 1-3 * * *"));
        assert!(!names_wall_times("0 */5 * * * *"));
        assert!(!names_wall_times("* 0 1 * * *"));
        assert!(!names_wall_times("@daily"));
    }

    #[test]
    fn time_zone_changes_the_instant() {
        let utc = cron("0 0 9 * * *", "UTC");
        let tokyo = cron("0 0 9 * * *", "Asia/Tokyo");
        let t = ms("2026-06-01T00:00:00Z") - 1;
        let l = Lifecycle::default();
        assert_eq!(
            utc.next_fire_after(t, l).unwrap(),
            Some(ms("2026-06-01T09:00:00Z"))
        );
        assert_eq!(
            tokyo.next_fire_after(t, l).unwrap(),
            Some(ms("2026-06-01T00:00:00Z"))
        );
    }

    #[test]
    fn lifecycle_bounds_fires() {
        let s = cron("0 0 * * * *", "UTC");
        let l = Lifecycle {
            start_ms: Some(ms("2026-01-01T05:30:00Z")),
            end_ms: Some(ms("2026-01-01T07:00:00Z")),
        };
        let t = ms("2026-01-01T00:00:00Z");
        assert_eq!(
            s.next_fire_after(t, l).unwrap(),
            Some(ms("2026-01-01T06:00:00Z"))
        );
        assert_eq!(
            s.next_fire_after(ms("2026-01-01T06:00:00Z"), l).unwrap(),
            Some(ms("2026-01-01T07:00:00Z"))
        );
        assert_eq!(
            s.next_fire_after(ms("2026-01-01T07:00:00Z"), l).unwrap(),
            None
        );
    }

    #[test]
    fn one_shot_and_api() {
        let at = Schedule::At { at_ms: 5_000 };
        let l = Lifecycle::default();
        assert_eq!(at.next_fire_after(4_999, l).unwrap(), Some(5_000));
        assert_eq!(at.next_fire_after(5_000, l).unwrap(), None);
        assert_eq!(Schedule::Api.next_fire_after(0, l).unwrap(), None);
    }

    #[test]
    fn bad_schedules_are_rejected_with_a_reason() {
        assert!(matches!(
            cron("61 * * * * *", "UTC").validate(),
            Err(ScheduleError::InvalidCron { .. })
        ));
        assert!(matches!(
            cron("* * * * *", "Mars/Olympus").validate(),
            Err(ScheduleError::UnknownTimeZone(_))
        ));
        assert!(matches!(
            Schedule::FixedRate { interval_ms: 10 }.validate(),
            Err(ScheduleError::IntervalTooShort { .. })
        ));
        assert!(cron("0 0 12 L * *", "Europe/Berlin").validate().is_ok());
    }

    #[test]
    fn schedule_json_is_tagged() {
        let s: Schedule =
            serde_json::from_str(r#"{"type":"cron","expression":"* * * * * *"}"#).unwrap();
        assert_eq!(
            s,
            Schedule::Cron {
                expression: "* * * * * *".into(),
                time_zone: None
            }
        );
    }
}
