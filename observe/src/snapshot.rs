//! Metrics read at scrape time from state a process keeps anyway (repair counts, live workers,
//! service states), so that nothing is counted twice.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Label sets and their values: `[("app", "billing")]` and 3.
pub type Rows = Vec<(Vec<(&'static str, String)>, u64)>;

/// Encodes one gauge family, a sample per row.
pub fn encode_gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &Rows,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        let gauge = ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX));
        gauge.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes one counter family (`name` without `_total`, which the encoder adds).
pub fn encode_counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &Rows,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}
