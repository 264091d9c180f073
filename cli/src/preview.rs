//! `rota schedule preview`: a CRON expression's next fire times, computed by the same function
//! the scheduler uses (`Schedule::next_fire_after`), so that what it shows is what will run.

use anyhow::{anyhow, bail};
use chrono::DateTime;
use chrono_tz::Tz;
use rota_shared::schedule::{Lifecycle, Schedule};
use serde::Serialize;

use crate::args::ScheduleCommand;
use crate::config::Settings;
use crate::table::render;
use crate::usage::usage;

const MAX_COUNT: usize = 10_000;

#[derive(Serialize)]
struct Fire {
    at_ms: i64,
    utc: String,
    local: String,
}

pub fn run(settings: &Settings, cmd: ScheduleCommand) -> anyhow::Result<()> {
    let ScheduleCommand::Preview {
        cron,
        tz,
        from,
        count,
    } = cmd;
    if count == 0 || count > MAX_COUNT {
        return Err(usage!("--count must be from 1 to {MAX_COUNT}"));
    }
    let schedule = Schedule::Cron {
        expression: cron.clone(),
        time_zone: tz.clone(),
    };
    schedule.validate()?;
    let zone: Tz = match tz.as_deref() {
        Some(name) => name.parse().map_err(|_| {
            usage!("unknown time zone {name:?}: use an IANA name such as Europe/Berlin")
        })?,
        None => Tz::UTC,
    };
    let mut after = match from.as_deref() {
        Some(text) => {
            DateTime::parse_from_rfc3339(text)
            .map_err(|e| usage!("invalid --from {text:?}: {e} (use RFC 3339)"))?
            .timestamp_millis()
            // The first fire may be at --from itself.
            - 1
        }
        None => rota_transport::wall_ms(),
    };
    let mut fires = Vec::with_capacity(count);
    while fires.len() < count {
        let Some(at_ms) = schedule.next_fire_after(after, Lifecycle::default())? else {
            break;
        };
        let at = DateTime::from_timestamp_millis(at_ms)
            .ok_or_else(|| anyhow!("fire time {at_ms} ms is out of range"))?;
        fires.push(Fire {
            at_ms,
            utc: at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            local: at
                .with_timezone(&zone)
                .format("%Y-%m-%d %H:%M:%S %:z %Z")
                .to_string(),
        });
        after = at_ms;
    }
    if fires.is_empty() {
        bail!("the CRON expression {cron:?} matches no time from then on");
    }
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&fires)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = fires
        .iter()
        .enumerate()
        .map(|(i, f)| vec![(i + 1).to_string(), f.local.clone(), f.utc.clone()])
        .collect();
    println!("{}", render(&["#", "LOCAL", "UTC"], &rows));
    Ok(())
}
