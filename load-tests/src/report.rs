//! The results of a run: the records, where they came from (commit, dirty
//! tree, command line, machine), and RESULTS.md, which gives each figure as
//! the median of the runs with their min and max, and the ratio of the
//! medians unless one of them is a capped value.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// One measured figure of one run of one scenario on one system.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub scenario: String,
    pub system: String,
    /// Which repeat (1-based) of the scenario this is.
    pub run: usize,
    pub metric: String,
    pub unit: String,
    pub value: f64,
    /// The value is the histogram's ceiling: the true figure is at least
    /// this (shown as "≥"; no ratio is formed from it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub capped: bool,
}

/// What a reader needs to trust (or reproduce) the figures.
#[derive(Debug, Serialize)]
pub struct Provenance {
    /// `git rev-parse --short HEAD`.
    pub commit: String,
    /// `git status --porcelain` was not empty outside load-tests/results/:
    /// the binaries may not be the commit's.
    pub dirty: bool,
    /// The orchestrator's command line.
    pub command_line: Vec<String>,
    /// Repeats of each scenario for each system.
    pub runs: usize,
}

impl Provenance {
    pub fn collect(runs: usize) -> Provenance {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        Provenance {
            commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default(),
            // Unknown (no git) counts as dirty: nothing vouches for the tree.
            // The harness's own output under load-tests/results/ (earlier
            // runs not committed yet) builds no binary: it does not count.
            dirty: git(&[
                "status",
                "--porcelain",
                "--",
                ":(top)",
                ":(top,exclude)load-tests/results",
            ])
            .is_none_or(|s| !s.is_empty()),
            command_line: std::env::args().collect(),
            runs,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_kb: u64,
    pub kernel: String,
    pub open_files_limit: String,
    /// The kernel's cap on every listener's accept backlog
    /// (`net.core.somaxconn`): both systems ask for 8192, and get at most
    /// this.
    pub somaxconn: String,
}

impl Machine {
    pub fn collect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let trimmed = |path: &str| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("")
                .trim()
                .to_owned(),
            memory_kb: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0),
            kernel: trimmed("/proc/sys/kernel/osrelease"),
            open_files_limit: std::fs::read_to_string("/proc/self/limits")
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_owned())
                .unwrap_or_default(),
            somaxconn: trimmed("/proc/sys/net/core/somaxconn"),
        }
    }
}

#[derive(Serialize)]
pub struct Results<'a> {
    pub label: &'a str,
    #[serde(flatten)]
    pub provenance: Provenance,
    pub machine: Machine,
    pub started_unix_s: u64,
    pub scale: f64,
    /// The systems, in the column order of RESULTS.md.
    pub systems: Vec<String>,
    pub records: &'a [Record],
}

impl Results<'_> {
    /// Writes `latest.json` and `RESULTS.md` into `out`.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("latest.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(out.join("RESULTS.md"), self.markdown())?;
        println!("wrote {}", out.join("RESULTS.md").display());
        Ok(())
    }

    fn markdown(&self) -> String {
        let p = &self.provenance;
        let m = &self.machine;
        let others: Vec<&str> = self
            .systems
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "tidings")
            .collect();
        let has_tidings = self.systems.iter().any(|s| s == "tidings");
        let mut out = format!(
            "# Load test results\n\n\
             Commit `{}`{}{}, scale {}, {} run(s) per figure{}, on {} CPUs ({}), {} MB RAM, \
             kernel {}, open-files limit {}, somaxconn {}.\n\
             Command: `{}`.\n\
             All systems run on this machine with the load generator; loopback only. \
             Each cell is the median of the runs, with (min–max) when there are several; \
             \"≥\" marks a value at the latency histogram's ceiling (the true figure is higher). \
             Ratio = tidings / the other system, of the medians.\n\n",
            p.commit,
            if p.dirty { " (dirty tree)" } else { "" },
            if self.label.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.label)
            },
            self.scale,
            p.runs,
            if p.runs > 1 {
                ", rotating which system goes first"
            } else {
                ""
            },
            m.cpus,
            m.cpu_model,
            m.memory_kb / 1024,
            m.kernel,
            m.open_files_limit,
            m.somaxconn,
            p.command_line.join(" "),
        );
        out.push_str("| scenario | metric | unit |");
        for s in &self.systems {
            out.push_str(&format!(" {s} |"));
        }
        if has_tidings {
            for o in &others {
                out.push_str(&format!(" tidings / {o} |"));
            }
        }
        out.push_str("\n| --- | --- | --- |");
        let columns = self.systems.len() + if has_tidings { others.len() } else { 0 };
        out.push_str(&" ---: |".repeat(columns));
        out.push('\n');
        for ((scenario, metric, unit), by_system) in self.table() {
            out.push_str(&format!("| {scenario} | {metric} | {unit} |"));
            for s in &self.systems {
                let cell = by_system.get(s.as_str()).map_or("–".to_owned(), |v| {
                    Summary::of(v).map_or("–".to_owned(), |s| s.show())
                });
                out.push_str(&format!(" {cell} |"));
            }
            if has_tidings {
                let t = by_system.get("tidings").and_then(|v| Summary::of(v));
                for o in &others {
                    let other = by_system.get(o).and_then(|v| Summary::of(v));
                    out.push_str(&format!(" {} |", ratio(t.as_ref(), other.as_ref())));
                }
            }
            out.push('\n');
        }
        out
    }

    /// (scenario, metric, unit) in the order they first appear -> system
    /// -> the values of its runs (the last one where a run recorded the
    /// metric twice).
    fn table(&self) -> Vec<Row<'_>> {
        let mut scenarios: Vec<&str> = Vec::new();
        let mut rows: BTreeMap<(usize, &str, &str), BySystemRun<'_>> = BTreeMap::new();
        for r in self.records {
            if !scenarios.contains(&r.scenario.as_str()) {
                scenarios.push(&r.scenario);
            }
            let pos = scenarios.iter().position(|s| *s == r.scenario).unwrap_or(0);
            rows.entry((pos, &r.metric, &r.unit))
                .or_default()
                .entry(&r.system)
                .or_default()
                .insert(r.run, (r.value, r.capped));
        }
        rows.into_iter()
            .map(|((pos, metric, unit), by_system)| {
                let by_system = by_system
                    .into_iter()
                    .map(|(s, runs)| (s, runs.into_values().collect()))
                    .collect();
                ((scenarios[pos], metric, unit), by_system)
            })
            .collect()
    }
}

/// A value and whether it is capped.
type Value = (f64, bool);
/// (scenario, metric, unit) -> system -> the values of its runs.
type Row<'a> = ((&'a str, &'a str, &'a str), BTreeMap<&'a str, Vec<Value>>);
/// system -> run -> value.
type BySystemRun<'a> = BTreeMap<&'a str, BTreeMap<usize, Value>>;

/// One figure over the runs. A capped value sorts as the largest (the
/// truth is at least the ceiling) and taints whatever summary lands on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: (f64, bool),
    pub min: (f64, bool),
    pub max: (f64, bool),
    pub runs: usize,
}

impl Summary {
    pub fn of(values: &[(f64, bool)]) -> Option<Summary> {
        let mut v = values.to_vec();
        // Capped values last; otherwise by value.
        v.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.total_cmp(&b.0)));
        let n = v.len();
        let (first, last) = (*v.first()?, *v.last()?);
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            let (a, b) = (v[n / 2 - 1], v[n / 2]);
            ((a.0 + b.0) / 2.0, a.1 || b.1)
        };
        Some(Summary {
            median,
            min: first,
            max: last,
            runs: n,
        })
    }

    fn show(&self) -> String {
        let one = |(v, capped): (f64, bool)| format!("{}{v:.2}", if capped { "≥ " } else { "" });
        if self.runs > 1 {
            format!("{} ({}–{})", one(self.median), one(self.min), one(self.max))
        } else {
            one(self.median)
        }
    }
}

/// tidings / other, of the medians; never from a capped value.
fn ratio(t: Option<&Summary>, other: Option<&Summary>) -> String {
    match (t, other) {
        (Some(t), Some(o)) if t.median.1 || o.median.1 => "n/a (capped)".to_owned(),
        (Some(t), Some(o)) if o.median.0 != 0.0 => format!("{:.2}", t.median.0 / o.median.0),
        _ => "–".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_of_three_runs() {
        let s = Summary::of(&[(3.0, false), (1.0, false), (2.0, false)]).unwrap();
        assert_eq!(s.median, (2.0, false));
        assert_eq!(s.min, (1.0, false));
        assert_eq!(s.max, (3.0, false));
        assert_eq!(s.show(), "2.00 (1.00–3.00)");
    }

    #[test]
    fn a_capped_value_is_shown_as_at_least_and_forms_no_ratio() {
        let capped = Summary::of(&[(120_000.0, true)]).unwrap();
        assert_eq!(capped.show(), "≥ 120000.00");
        let t = Summary::of(&[(4.0, false)]).unwrap();
        assert_eq!(ratio(Some(&t), Some(&capped)), "n/a (capped)");
        assert_eq!(ratio(Some(&capped), Some(&t)), "n/a (capped)");
        let p = Summary::of(&[(8.0, false)]).unwrap();
        assert_eq!(ratio(Some(&t), Some(&p)), "0.50");
    }

    #[test]
    fn a_capped_run_sorts_last_and_taints_the_median_it_lands_on() {
        // Two of three runs at the ceiling: the median is capped.
        let s = Summary::of(&[(120_000.0, true), (5.0, false), (120_000.0, true)]).unwrap();
        assert_eq!(s.median, (120_000.0, true));
        assert_eq!(s.min, (5.0, false));
        // One of three: the median is a measurement, the max is not.
        let s = Summary::of(&[(120_000.0, true), (5.0, false), (7.0, false)]).unwrap();
        assert_eq!(s.median, (7.0, false));
        assert_eq!(s.max, (120_000.0, true));
    }
}
