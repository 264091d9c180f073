//! How a job is timed, and when it fires next. Times are milliseconds since the Unix epoch (UTC).

use chrono::{DateTime, TimeZone, Utc};
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
                next_cron_fire(&cron, tz, after_ms)?
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

/// CRON fires on whole seconds: the next one strictly after `after_ms`.
fn next_cron_fire(cron: &Cron, tz: Tz, after_ms: i64) -> Result<Option<i64>, ScheduleError> {
    let whole_second = after_ms.div_euclid(1000);
    let Some(after) = Utc.timestamp_opt(whole_second, 0).single() else {
        return Err(ScheduleError::Unschedulable(format!(
            "time {after_ms} ms is out of range"
        )));
    };
    let after: DateTime<Tz> = after.with_timezone(&tz);
    match cron.find_next_occurrence(&after, false) {
        Ok(next) => Ok(Some(next.timestamp_millis())),
        // Patterns such as `0 0 30 2 *` never match; that is not an error of the caller's now.
        Err(_) => Ok(None),
    }
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
