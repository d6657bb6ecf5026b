//! `tierwise simulate`: price a workload profile before anything is deployed. Per task: what it costs
//! a month today, what it would cost after the move (nothing at the margin on the local server, whose
//! fixed cost is counted once), and the daily volume at which the local server pays for itself.
//! Where the profile quotes a source's own figures, the arithmetic is shown next to them, so a table
//! whose rows do not add up to its total says so.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Price;
use crate::ledger::Tokens;
use crate::ledger::price::PriceTable;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default = "default_days")]
    pub days_per_month: f64,
    /// The total the source claims for today's rows, to check against their sum.
    pub reported_total_usd: Option<f64>,
    /// The source's own "after" figures, to check against the arithmetic.
    pub reported_after: Option<ReportedAfter>,
    pub local: Option<LocalServer>,
    #[serde(default)]
    pub prices: std::collections::BTreeMap<String, Price>,
    #[serde(rename = "task")]
    pub tasks: Vec<Task>,
}

fn default_days() -> f64 {
    super::DAYS_PER_MONTH
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalServer {
    pub fixed_monthly_usd: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedAfter {
    pub api_usd: f64,
    pub total_usd: f64,
    pub saving_usd: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    #[serde(default)]
    pub calls_per_day: f64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    /// The model the task uses today.
    pub model: Option<String>,
    /// `"local"` to move it to the local server, a model id to move it to another API model;
    /// absent, it stays where it is.
    pub move_to: Option<String>,
    /// An effective price for all tokens, USD per million, instead of the price table's.
    pub usd_per_million: Option<f64>,
    /// A flat monthly amount (retries, development) instead of a per-call cost.
    pub monthly_usd: Option<f64>,
    /// The source's own figure for this task, to check against the arithmetic.
    pub reported_monthly_usd: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Serialize)]
pub struct TaskResult {
    pub name: String,
    pub calls_per_day: f64,
    pub tokens_per_call: u64,
    pub model: Option<String>,
    pub after: String,
    pub today_monthly_usd: f64,
    pub after_monthly_usd: f64,
    pub reported_monthly_usd: Option<f64>,
    /// Daily calls at which moving this task alone pays for the local server.
    pub break_even_calls_per_day: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Simulation {
    pub days_per_month: f64,
    pub tasks: Vec<TaskResult>,
    pub today_monthly_usd: f64,
    pub after_api_monthly_usd: f64,
    pub fixed_monthly_usd: f64,
    pub after_monthly_usd: f64,
    pub saving_monthly_usd: f64,
    pub saving_pct: f64,
    /// The share of today's moved volume at which the local server pays for itself (1.0 = today's).
    pub break_even_volume_share: Option<f64>,
    /// Where the source's figures and the arithmetic disagree.
    pub discrepancies: Vec<String>,
}

impl Workload {
    pub fn load(path: &Path) -> Result<Workload, SimulateError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimulateError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|err| SimulateError::Invalid {
            path: path.display().to_string(),
            message: err.to_string(),
        })
    }

    /// Numbers a month could not hold: a negative or NaN volume would turn into a saving that
    /// does not exist (NaN passes every comparison the verdicts make).
    fn check(&self) -> Result<(), String> {
        let amount = |value: f64, what: String| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(format!("{what} is {value}; it must be a number, 0 or more"))
            }
        };
        if !(self.days_per_month.is_finite() && self.days_per_month > 0.0) {
            return Err(format!(
                "days_per_month is {}; it must be a number of days above 0",
                self.days_per_month
            ));
        }
        if let Some(local) = &self.local {
            amount(local.fixed_monthly_usd, "local.fixed_monthly_usd".into())?;
        }
        for task in &self.tasks {
            let name = &task.name;
            amount(task.calls_per_day, format!("task {name:?}: calls_per_day"))?;
            for (field, value) in [
                ("usd_per_million", task.usd_per_million),
                ("monthly_usd", task.monthly_usd),
            ] {
                if let Some(value) = value {
                    amount(value, format!("task {name:?}: {field}"))?;
                }
            }
        }
        Ok(())
    }

    pub fn simulate(&self) -> Result<Simulation, String> {
        self.check()?;
        let table = PriceTable::new(&self.prices);
        let days = self.days_per_month;
        let fixed = self.local.as_ref().map_or(0.0, |l| l.fixed_monthly_usd);
        let mut tasks = Vec::new();
        let mut discrepancies = Vec::new();
        let mut moved_savings = 0.0;
        for task in &self.tasks {
            let monthly_on = |model: Option<&str>, effective: Option<f64>| -> Result<f64, String> {
                if let Some(flat) = task.monthly_usd {
                    return Ok(flat);
                }
                let calls = task.calls_per_day * days;
                let tokens = (task.input_tokens + task.output_tokens) as f64;
                if let Some(price) = effective {
                    return Ok(calls * tokens * price / 1e6);
                }
                let model = model.ok_or_else(|| {
                    format!("task {:?} needs a model or usd_per_million", task.name)
                })?;
                let usage = Tokens {
                    input: task.input_tokens,
                    cached: 0,
                    cache_write: 0,
                    output: task.output_tokens,
                    estimated: false,
                };
                let price = table.get(model).ok_or_else(|| {
                    format!(
                        "task {:?}: model {model:?} has no known price; add [prices.{model:?}]",
                        task.name
                    )
                })?;
                let per_call = price.cost(usage.input, usage.cached, usage.output);
                Ok(calls * per_call.as_usd_f64())
            };
            let today = monthly_on(task.model.as_deref(), task.usd_per_million)?;
            let (after, after_cost) = match task.move_to.as_deref() {
                Some("local") => {
                    moved_savings += today;
                    ("local".to_string(), 0.0)
                }
                Some(model) => (model.to_string(), monthly_on(Some(model), None)?),
                None => (
                    task.model.clone().unwrap_or_else(|| "unchanged".into()),
                    today,
                ),
            };
            if let Some(reported) = task.reported_monthly_usd
                && (reported - today).abs() > 0.5
            {
                discrepancies.push(format!(
                    "{}: the source says ~${reported:.2}/month; {:.0} calls/day × {} tokens × {days} days at the stated price gives ${today:.2}",
                    task.name,
                    task.calls_per_day,
                    task.input_tokens + task.output_tokens
                ));
            }
            let per_call = if task.calls_per_day > 0.0 {
                today / (task.calls_per_day * days)
            } else {
                0.0
            };
            tasks.push(TaskResult {
                name: task.name.clone(),
                calls_per_day: task.calls_per_day,
                tokens_per_call: task.input_tokens + task.output_tokens,
                model: task.model.clone(),
                break_even_calls_per_day: (task.move_to.as_deref() == Some("local")
                    && per_call > 0.0
                    && fixed > 0.0)
                    .then(|| fixed / (per_call * days)),
                after,
                today_monthly_usd: today,
                after_monthly_usd: after_cost,
                reported_monthly_usd: task.reported_monthly_usd,
            });
        }
        let today: f64 = tasks.iter().map(|t| t.today_monthly_usd).sum();
        let after_api: f64 = tasks.iter().map(|t| t.after_monthly_usd).sum();
        let after = after_api + fixed;
        let saving = today - after;
        if let Some(reported) = self.reported_total_usd
            && (reported - today).abs() > 0.5
        {
            discrepancies.push(format!(
                "total: the source says ~${reported:.2}/month, but its rows add up to ${today:.2}"
            ));
        }
        if let Some(claimed) = &self.reported_after {
            if (claimed.api_usd - after_api).abs() > 0.5 {
                discrepancies.push(format!(
                    "after, API: the source says ~${:.2}/month; the tasks that stay on the API add up to ${after_api:.2}",
                    claimed.api_usd
                ));
            }
            if (claimed.total_usd - after).abs() > 0.5 {
                discrepancies.push(format!(
                    "after, total: the source says ~${:.2}/month; API ${after_api:.2} + fixed ${fixed:.2} = ${after:.2}",
                    claimed.total_usd
                ));
            }
            if (claimed.saving_usd - saving).abs() > 0.5 {
                discrepancies.push(format!(
                    "saving: the source says ~${:.2}/month; from its rows the saving is ${saving:.2} ({:.1}%)",
                    claimed.saving_usd,
                    if today > 0.0 { saving * 100.0 / today } else { 0.0 }
                ));
            }
        }
        Ok(Simulation {
            days_per_month: days,
            today_monthly_usd: today,
            after_api_monthly_usd: after_api,
            fixed_monthly_usd: fixed,
            after_monthly_usd: after,
            saving_monthly_usd: saving,
            saving_pct: if today > 0.0 {
                saving * 100.0 / today
            } else {
                0.0
            },
            break_even_volume_share: (moved_savings > 0.0 && fixed > 0.0)
                .then(|| fixed / moved_savings),
            tasks,
            discrepancies,
        })
    }
}

impl Simulation {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a simulation always serializes")
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "task,calls_per_day,tokens_per_call,model,after,today_monthly_usd,after_monthly_usd,reported_monthly_usd,break_even_calls_per_day\n",
        );
        for t in &self.tasks {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{:.2},{:.2},{},{}",
                super::csv_field(&t.name),
                t.calls_per_day,
                t.tokens_per_call,
                super::csv_field(t.model.as_deref().unwrap_or("")),
                super::csv_field(&t.after),
                t.today_monthly_usd,
                t.after_monthly_usd,
                t.reported_monthly_usd
                    .map_or(String::new(), |r| format!("{r:.2}")),
                t.break_even_calls_per_day
                    .map_or(String::new(), |b| format!("{b:.0}")),
            );
        }
        let _ = writeln!(
            out,
            "TOTAL,,,,,{:.2},{:.2},,",
            self.today_monthly_usd, self.after_monthly_usd
        );
        out
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<34} {:>9} {:>10} {:<24} {:<12} {:>11} {:>11} {:>14}",
            "task",
            "calls/day",
            "tok/call",
            "model today",
            "after",
            "today/mo",
            "after/mo",
            "break-even/day"
        );
        for t in &self.tasks {
            let _ = writeln!(
                out,
                "{:<34} {:>9.0} {:>10} {:<24} {:<12} {:>11} {:>11} {:>14}",
                t.name,
                t.calls_per_day,
                t.tokens_per_call,
                t.model.as_deref().unwrap_or("-"),
                t.after,
                format!("${:.2}", t.today_monthly_usd),
                format!("${:.2}", t.after_monthly_usd),
                t.break_even_calls_per_day
                    .map_or("-".to_string(), |b| format!("{b:.0}")),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<34} {:>11}/mo",
            "today (all API)",
            format!("${:.2}", self.today_monthly_usd)
        );
        let _ = writeln!(
            out,
            "{:<34} {:>11}/mo",
            "after: API spend",
            format!("${:.2}", self.after_api_monthly_usd)
        );
        let _ = writeln!(
            out,
            "{:<34} {:>11}/mo",
            "after: local server (fixed)",
            format!("${:.2}", self.fixed_monthly_usd)
        );
        let _ = writeln!(
            out,
            "{:<34} {:>11}/mo",
            "after: total",
            format!("${:.2}", self.after_monthly_usd)
        );
        let _ = writeln!(
            out,
            "{:<34} {:>11}/mo ({:.1}%)",
            "net saving",
            format!("${:.2}", self.saving_monthly_usd),
            self.saving_pct
        );
        if let Some(share) = self.break_even_volume_share {
            let _ = writeln!(
                out,
                "break-even: the local server pays for itself at {:.0}% of today's volume of the moved tasks",
                share * 100.0
            );
        }
        if !self.discrepancies.is_empty() {
            let _ = writeln!(
                out,
                "\nwhere the source's figures disagree with its own rows:"
            );
            for d in &self.discrepancies {
                let _ = writeln!(out, "  - {d}");
            }
        }
        out
    }
}
