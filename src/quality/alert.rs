//! Where a route's quality changes go: the ledger's `quality_events` (which also decides, between
//! replicas, who announces), a log line with the evidence, a metric, and a POST to
//! `alerts.webhook`. Each change is announced once: an alert episode fires once and clears once,
//! and a demotion or promotion is announced when it happens.
//!
//! Budget alerts ([`crate::limits::Crossing`]: a budget reached its `alert_at` share, or is spent)
//! go the same ways, once per budget, month and level: `budget_alerts` in the ledger decides
//! between replicas and restarts who announces.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::monitor::Interval;
use super::watch::{Change, Watch, now_ms};
use crate::config::{BudgetScope, Config};
use crate::ledger::budget::{AlertLevel, AlertRow};
use crate::ledger::quality::EventKind;
use crate::ledger::{Picodollars, Store};
use crate::limits::Crossing;

/// How long one webhook POST may take, and how many times it is tried.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
const WEBHOOK_TRIES: u32 = 3;

pub struct Alerts {
    /// Notices on their way to the webhook, posted one after another so that it receives them in
    /// the order they happened (a demotion never arrives before the alert that caused it).
    webhook: Option<mpsc::UnboundedSender<Posted>>,
}

/// What the webhook is sent: a quality change or a budget alert.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Posted {
    Quality(Notice),
    Budget(BudgetNotice),
}

impl Posted {
    /// What the log says a failed delivery was about.
    fn about(&self) -> String {
        match self {
            Posted::Quality(notice) => format!("route {}", notice.route),
            Posted::Budget(notice) => match &notice.name {
                Some(name) => format!("{} {name}", notice.scope),
                None => "all API spend".to_string(),
            },
        }
    }
}

/// What the webhook receives of a budget alert.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetNotice {
    /// `budget_alert_at` (the spend reached `alert_at` of the budget) or `budget_spent` (its
    /// settled spend can no longer hold a usual request's worst case, or reached it: API tiers are passed
    /// over, or requests refused — `share` says how much of it is really spent).
    pub event: &'static str,
    /// `all`, `route` or `key`.
    pub scope: &'static str,
    /// The route's or key's name; `null` for all API spend.
    pub name: Option<String>,
    /// `2026-12`.
    pub month: String,
    pub spent_usd: f64,
    pub monthly_usd: f64,
    /// `spent_usd` / `monthly_usd`: under 1 where a request's worst case no longer fitted.
    pub share: f64,
    /// What requests in flight held when it was noticed.
    pub held_usd: f64,
    /// The usual worst case (the smaller of the refused request's and the smallest held this
    /// month) the settled spend could not hold; `null` where the spend itself reached the level.
    pub worst_case_usd: Option<f64>,
    /// How many of the month's corrections came before the level was armed again (0: the
    /// month's first announcement of this level).
    pub after_corrections: u64,
    pub alert_at: f64,
    pub on_exhausted: &'static str,
    pub ts_ms: i64,
}

/// What the webhook receives.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// `alert_fired`, `alert_cleared`, `demoted` or `promoted`.
    pub event: EventKind,
    pub route: String,
    /// The tier judged and its model.
    pub tier: String,
    pub model: String,
    pub reference: String,
    pub agreement: f64,
    pub interval: Interval,
    pub samples: u64,
    /// The rolling window, in samples.
    pub window: u32,
    pub min_agreement: f64,
    pub ts_ms: i64,
}

impl Alerts {
    /// Must be called on a runtime: the webhook's sender runs as a task of it.
    pub fn new(config: &Config) -> Alerts {
        let webhook = config.alerts.webhook.clone().and_then(|url| {
            // Redirects are not followed: the URL often holds the token, and a redirect would
            // carry it on to another host in `Referer` (and the notice with it). A 3xx is a
            // failed delivery, logged with the host, never the URL.
            match reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .referer(false)
                .build()
            {
                Ok(client) => {
                    // Unbounded: a notice is a change of state, a handful a day.
                    let (notices, mut queued) = mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        while let Some(notice) = queued.recv().await {
                            post(&client, &url, notice).await;
                        }
                    });
                    Some(notices)
                }
                Err(err) => {
                    tracing::error!("cannot build the alert webhook's client: {err}; alerts go to the log and metrics only");
                    None
                }
            }
        });
        Alerts { webhook }
    }

    /// Stores the change and, if this replica stored it first, announces it.
    pub async fn announce(&self, store: &Store, watch: &Watch, change: &Change) {
        let ts_ms = now_ms();
        let event = watch.event(change, ts_ms);
        match store.record_event(&event).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(route = %event.route, seq = event.seq, "another replica announced this quality change");
                return;
            }
            // The database is away: announcing twice beats not announcing.
            Err(err) => tracing::warn!(route = %event.route, "cannot store a quality event: {err}"),
        }
        let shadow = watch.shadow();
        let notice = Notice {
            event: change.event,
            route: watch.route.name.clone(),
            tier: shadow.candidate.name.clone(),
            model: shadow.candidate.model.clone(),
            reference: shadow.reference.name.clone(),
            agreement: change.evidence.agreement,
            interval: change.evidence.interval,
            samples: change.evidence.samples,
            window: shadow.window,
            min_agreement: shadow.min_agreement,
            ts_ms,
        };
        log(&notice);
        if change.event == EventKind::AlertFired {
            crate::metrics::quality_alert_fired(&notice.route, &notice.model);
        }
        if let Some(webhook) = &self.webhook {
            let _ = webhook.send(Posted::Quality(notice));
        }
    }

    /// Stores a budget alert and, if this replica stored it first (no other replica, nor this
    /// one before a restart, announced it this month), announces it.
    pub async fn announce_budget(&self, store: &Store, crossing: &Crossing) {
        let ts_ms = now_ms();
        let row = AlertRow {
            month: crossing.month.to_string(),
            scope: crossing.scope.kind().to_string(),
            name: crossing.scope.name().to_string(),
            level: crossing.level.as_str().to_string(),
            ts_ms,
            spent_pusd: crossing.spent.0,
            limit_pusd: crossing.budget.monthly_pusd,
            armed_after: i64::try_from(crossing.armed_after).unwrap_or(i64::MAX),
        };
        match store.record_budget_alert(&row).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(budget = %crossing.scope, level = crossing.level.as_str(), "this budget alert was announced already this month");
                return;
            }
            // The database is away: announcing twice beats not announcing.
            Err(err) => {
                tracing::warn!(budget = %crossing.scope, "cannot store a budget alert: {err}")
            }
        }
        let budget = &crossing.budget;
        let ratio = if budget.monthly_pusd > 0 {
            crossing.spent.0 as f64 / budget.monthly_pusd as f64
        } else {
            1.0
        };
        let share = if budget.monthly_pusd > 0 {
            // Floored: 99.97% spent is not "100%".
            format!(" ({:.1}%)", (ratio * 1000.0).floor() / 10.0)
        } else {
            String::new()
        };
        let again = if crossing.armed_after > 0 {
            " (again: a correction this month had taken the spend back under it)"
        } else {
            ""
        };
        let scope = &crossing.scope;
        match (crossing.level, crossing.worst) {
            (AlertLevel::AlertAt, _) => tracing::warn!(
                budget = %scope, month = %crossing.month,
                "BUDGET ALERT: {scope} has spent ${}{share} of its ${} for {}, past its alert_at of {:.0}%{again}",
                crossing.spent, budget.monthly_usd, crossing.month, budget.alert_at * 100.0
            ),
            (AlertLevel::Spent, Some(worst)) => tracing::warn!(
                budget = %scope, month = %crossing.month,
                "BUDGET SPENT: {scope} can no longer hold a usual request's worst case (${worst}, with nothing held) within its ${} for {}: ${}{share} spent and ${} held by requests in flight{again}; on_exhausted = {} until the month ends or the budget is corrected (tierwise budget reset|adjust)",
                budget.monthly_usd, crossing.month, crossing.spent, crossing.held, budget.on_exhausted.as_str()
            ),
            (AlertLevel::Spent, None) => tracing::warn!(
                budget = %scope, month = %crossing.month,
                "BUDGET SPENT: {scope} has spent ${}{share} of its ${} for {}{again}; on_exhausted = {} until the month ends or the budget is corrected (tierwise budget reset|adjust)",
                crossing.spent, budget.monthly_usd, crossing.month, budget.on_exhausted.as_str()
            ),
        }
        crate::metrics::budget_alert(scope.kind(), scope.name(), crossing.level.as_str());
        if let Some(webhook) = &self.webhook {
            let _ = webhook.send(Posted::Budget(BudgetNotice {
                event: match crossing.level {
                    AlertLevel::AlertAt => "budget_alert_at",
                    AlertLevel::Spent => "budget_spent",
                },
                scope: scope.kind(),
                name: (*scope != BudgetScope::All).then(|| scope.name().to_string()),
                month: crossing.month.to_string(),
                spent_usd: crossing.spent.as_usd_f64(),
                monthly_usd: budget.monthly_usd,
                share: ratio,
                held_usd: crossing.held.as_usd_f64(),
                worst_case_usd: crossing.worst.map(Picodollars::as_usd_f64),
                after_corrections: crossing.armed_after,
                alert_at: budget.alert_at,
                on_exhausted: budget.on_exhausted.as_str(),
                ts_ms,
            }));
        }
    }
}

/// Announces the budget alerts noticed on the request path, one after another, for as long as the
/// gateway runs.
pub async fn announce_budgets(
    alerts: std::sync::Arc<Alerts>,
    store: Store,
    mut crossings: mpsc::UnboundedReceiver<Crossing>,
) {
    while let Some(crossing) = crossings.recv().await {
        alerts.announce_budget(&store, &crossing).await;
    }
}

fn log(notice: &Notice) {
    let evidence = format!(
        "agreement {:.1}% (95% interval {:.1}–{:.1}%) over the last {} samples; the bar is {:.1}%",
        notice.agreement * 100.0,
        notice.interval.low * 100.0,
        notice.interval.high * 100.0,
        notice.samples,
        notice.min_agreement * 100.0,
    );
    let (route, tier) = (&notice.route, &notice.tier);
    match notice.event {
        EventKind::AlertFired => tracing::warn!(
            route = %route, tier = %tier, model = %notice.model,
            "QUALITY ALERT: {tier} ({}) no longer agrees with {} well enough: {evidence}",
            notice.model, notice.reference
        ),
        EventKind::AlertCleared => tracing::info!(
            route = %route, tier = %tier, model = %notice.model,
            "quality recovered: {tier} agrees with {} again: {evidence}", notice.reference
        ),
        EventKind::Demoted => tracing::warn!(
            route = %route, tier = %tier,
            "DEMOTED {tier} on route {route}: the route serves from its next tier and checks {tier} in reverse: {evidence}"
        ),
        EventKind::Promoted => tracing::info!(
            route = %route, tier = %tier,
            "PROMOTED {tier} on route {route}: agreement is proven, the route serves from it: {evidence}"
        ),
    }
}

/// POSTs the notice, retrying twice; the URL is never logged (it may hold a token).
async fn post(client: &reqwest::Client, url: &reqwest::Url, notice: Posted) {
    let mut last = String::new();
    for attempt in 0..WEBHOOK_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        }
        let body = serde_json::to_vec(&notice).expect("a notice always serializes");
        let sent = client
            .post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => last = format!("it answered HTTP {}", response.status().as_u16()),
            Err(err) => last = format!("{}", err.without_url()),
        }
    }
    tracing::error!(
        about = %notice.about(),
        host = url.host_str().unwrap_or(""),
        "the alert webhook was not delivered after {WEBHOOK_TRIES} tries: {last}"
    );
}
