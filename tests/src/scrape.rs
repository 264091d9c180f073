//! Reading a Prometheus text exposition (what `/metrics` answers), so tests can assert on
//! samples by name and labels.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",…} 12.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// The families named by `# TYPE` lines, with or without samples.
    pub families: Vec<String>,
}

impl Scrape {
    /// Parses `text`; a line that is not a sample or a comment is an error naming it.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut out = Scrape::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some(name) = rest.split_whitespace().next() {
                    out.families.push(name.to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            out.samples.push(parse_sample(line)?);
        }
        Ok(out)
    }

    /// The sum of the samples called `name` whose labels include every pair of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether a family or a sample of that name (a histogram's `_bucket`, `_sum` and `_count`
    /// belong to its family; a counter's `_total` to its) is in the exposition.
    pub fn knows(&self, name: &str) -> bool {
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        self.families.iter().any(|f| f == name || f == family)
            || self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let bad = || anyhow::anyhow!("not a sample line: {line:?}");
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').ok_or_else(bad)?;
            (&line[..open], &line[open + 1..close], &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ').ok_or_else(bad)?;
            (name, "", rest)
        }
    };
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(bad)?
        .parse::<f64>()
        .map_err(|_| bad())?;
    let mut map = BTreeMap::new();
    // Label values here never hold a quote or a comma (app names are subject tokens).
    for pair in labels.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
        map.insert(k.to_owned(), v.trim_matches('"').to_owned());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels: map,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text = "# TYPE rota_x counter\nrota_x_total{app=\"a\",status=\"ok\"} 2\n\
                    rota_x_total{app=\"b\",status=\"ok\"} 3\n# TYPE rota_up gauge\nrota_up 1\n# EOF\n";
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.sum("rota_x_total", &[("status", "ok")]), 5.0);
        assert_eq!(s.sum("rota_x_total", &[("app", "a")]), 2.0);
        assert_eq!(s.sum("rota_up", &[]), 1.0);
        assert!(s.knows("rota_x_total") && s.knows("rota_up") && !s.knows("rota_y"));
        assert!(Scrape::parse("what is this").is_err());
    }
}
