//! Each shadowed route's quality state, shared by the request path and the shadow checks: whether a
//! request is sampled, whether the candidate tier is demoted, the day's shadow spend against its
//! budget, and the monitor that turns scored samples into episodes and switches.
//!
//! The request path only reads atomics here. The monitor sits behind a mutex that the shadow
//! checks take for the length of one sample's arithmetic, never across an await.
//!
//! The state is the ledger's: at start-up and every [`RESYNC`] each watch takes up the latest
//! scored samples and the latest stored episode and switch, whichever replica wrote them, so that
//! several replicas judge one window and agree on whether a route is demoted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::Semaphore;

use super::monitor::{Episode, Evidence, Interval, Monitor, MonitorPolicy};
use crate::config::{Config, OnDrift, OnProof, Route, Shadow};
use crate::ledger::quality::{DAY_MS, EventKind, QualityEvent, StoredState, utc_day};
use crate::ledger::{LedgerError, Picodollars, Purpose, Store};
use crate::limits::{Meter, Reservation, Unit};

/// How often each watch takes up the ledger's view (other replicas' samples and switches).
pub const RESYNC: Duration = Duration::from_secs(15);

/// Every shadowed route's watch, by route name.
pub struct Watches {
    routes: HashMap<String, Arc<Watch>>,
}

impl Watches {
    /// A watch for each route with a shadow check, each taken up where the ledger left it.
    pub async fn load(config: &Config, store: &Store) -> Result<Watches, LedgerError> {
        let mut routes = HashMap::new();
        for route in &config.routes {
            if route.shadow.is_some() {
                let watch = Watch::new(route.clone());
                watch.resync(store).await?;
                routes.insert(route.name.clone(), Arc::new(watch));
            }
        }
        Ok(Watches { routes })
    }

    pub fn get(&self, route: &str) -> Option<&Arc<Watch>> {
        self.routes.get(route)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Watch>> {
        self.routes.values()
    }

    /// Whether a request to `route` is chosen for its shadow check: its sample rate, unless the
    /// day's budget is spent. Called on the request path: atomics and a random number.
    pub fn sampled(&self, route: &Route) -> bool {
        let Some(shadow) = &route.shadow else {
            return false;
        };
        if shadow.sample_rate <= 0.0 || fastrand::f64() >= shadow.sample_rate {
            return false;
        }
        self.routes
            .get(&route.name)
            .is_some_and(|watch| !watch.over_budget(now_ms()))
    }

    /// Whether `route`'s primary tier is demoted: the route serves from its next tier.
    pub fn demoted(&self, route: &Route) -> bool {
        route.shadow.is_some()
            && self
                .routes
                .get(&route.name)
                .is_some_and(|watch| watch.demoted())
    }
}

/// One shadowed route's state.
pub struct Watch {
    pub route: Arc<Route>,
    demoted: AtomicBool,
    /// The UTC day the budget was found spent on; sampling resumes the next day.
    spent_out_on: AtomicI64,
    pub(super) in_flight: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    monitor: Monitor,
    /// The window of scored samples the ledger held at the last resync (parts per million,
    /// oldest first); `None` before the first.
    stored_window: Option<Vec<i64>>,
    /// The latest event sequence number this watch knows of.
    seq: i64,
    /// The UTC day `spent` and `reserved` are for.
    day: i64,
    /// The day's shadow spend: this replica's settled calls, or the ledger's sum over every
    /// replica where that is more.
    spent: Picodollars,
    /// The worst-case cost of this replica's shadow calls in flight.
    reserved: Picodollars,
}

/// A change a sample brought: an episode began or ended, or the route switched tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub event: EventKind,
    pub evidence: Evidence,
    pub seq: i64,
}

/// A watch as `/admin/api/quality` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Standing {
    pub route: String,
    pub candidate: String,
    pub candidate_model: String,
    pub reference: String,
    pub reference_model: String,
    pub scorer: crate::config::ScorerKind,
    pub sample_rate: f64,
    pub min_agreement: f64,
    pub window: u32,
    pub min_samples: u32,
    pub on_drift: OnDrift,
    pub on_proof: OnProof,
    /// Agreement over the window, and its 95% interval; `None` before the first sample.
    pub agreement: Option<f64>,
    pub interval: Option<Interval>,
    pub samples: u64,
    pub alerting: bool,
    pub demoted: bool,
    pub proven: bool,
    pub spent_today_usd: String,
    pub daily_budget_usd: f64,
}

impl Watch {
    fn new(route: Arc<Route>) -> Watch {
        let shadow = route
            .shadow
            .as_ref()
            .expect("a watch is made only for a route with a shadow check");
        Watch {
            demoted: AtomicBool::new(shadow.on_proof == OnProof::Promote),
            spent_out_on: AtomicI64::new(i64::MIN),
            in_flight: Arc::new(Semaphore::new(shadow.concurrency as usize)),
            state: Mutex::new(State {
                monitor: Monitor::new(MonitorPolicy::of(shadow)),
                stored_window: None,
                seq: 0,
                day: i64::MIN,
                spent: Picodollars(0),
                reserved: Picodollars(0),
            }),
            route,
        }
    }

    pub fn shadow(&self) -> &Shadow {
        self.route
            .shadow
            .as_ref()
            .expect("a watch is made only for a route with a shadow check")
    }

    pub fn demoted(&self) -> bool {
        self.demoted.load(Ordering::Relaxed)
    }

    fn over_budget(&self, now_ms: i64) -> bool {
        self.spent_out_on.load(Ordering::Relaxed) == utc_day(now_ms).0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain numbers behind, still worth reading.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds `worst`, a call's worst-case cost, against the day's budget until the reservation is
    /// settled with what the call really cost (see [`Meter`]); `None` when the day's
    /// spend, the calls in flight and `worst` would pass it. `ledger` is the day's shadow spend of
    /// every replica as the ledger has it, read just before, where it could be read: other
    /// replicas' calls count once they are stored, so together they overrun the budget by at most
    /// what their calls in flight hold (`shadow.concurrency` reservations each). `floor` is what
    /// the smallest call costs at worst: once even that does not fit, sampling stops for the day.
    pub fn reserve(
        self: &Arc<Self>,
        now_ms: i64,
        worst: Picodollars,
        floor: Picodollars,
        ledger: Option<Picodollars>,
    ) -> Option<Reservation> {
        let day = utc_day(now_ms).0;
        let budget = i128::from(Picodollars::from_usd(self.shadow().daily_budget_usd).0);
        let mut state = self.lock();
        if state.day != day {
            state.day = day;
            state.spent = Picodollars(0);
            state.reserved = Picodollars(0);
        }
        if let Some(ledger) = ledger
            && ledger > state.spent
        {
            state.spent = ledger;
        }
        let committed = i128::from(state.spent.0) + i128::from(state.reserved.0);
        if committed + i128::from(floor.0) > budget && state.reserved.0 == 0 {
            self.spent_out_on.store(day, Ordering::Relaxed);
        }
        if committed + i128::from(worst.0) > budget {
            return None;
        }
        state.reserved =
            Picodollars::saturating(i128::from(state.reserved.0) + i128::from(worst.0));
        Some(Reservation::new(
            self.clone(),
            Unit::Picodollars,
            day,
            worst.0.max(0) as u64,
        ))
    }

    /// Adds a scored sample; returns what it changed, each change numbered for the ledger.
    pub fn record(&self, agreement: f64) -> Vec<Change> {
        let shadow = self.shadow();
        let mut state = self.lock();
        let mut events = Vec::new();
        match state.monitor.record(agreement) {
            Some(Episode::Fired(evidence)) => {
                events.push((EventKind::AlertFired, evidence.clone()));
                if shadow.on_drift == OnDrift::Demote && !self.demoted() {
                    self.demoted.store(true, Ordering::Relaxed);
                    events.push((EventKind::Demoted, evidence));
                }
            }
            Some(Episode::Cleared(evidence)) => events.push((EventKind::AlertCleared, evidence)),
            None => {}
        }
        let may_promote = shadow.on_drift == OnDrift::Demote || shadow.on_proof == OnProof::Promote;
        if self.demoted() && may_promote && !state.monitor.alerting() && state.monitor.proven() {
            self.demoted.store(false, Ordering::Relaxed);
            events.push((EventKind::Promoted, state.monitor.evidence()));
        }
        let mut changes = Vec::with_capacity(events.len());
        for (event, evidence) in events {
            state.seq += 1;
            changes.push(Change {
                event,
                evidence,
                seq: state.seq,
            });
        }
        self.publish(&state);
        changes
    }

    /// Takes up the ledger's view: the latest window of scored samples, the latest episode and
    /// switch, and the day's shadow spend. The monitor is replaced only when the ledger has
    /// something it has not: a window that changed since the last resync, or a later event.
    /// Replaced at every resync, it would lose the samples it scored that the ledger's writer has
    /// not stored yet, and judge a window older than its own.
    pub async fn resync(&self, store: &Store) -> Result<(), LedgerError> {
        let shadow = self.shadow();
        let route = &self.route.name;
        let candidate = &shadow.candidate.name;
        let scores = store
            .recent_agreement(route, candidate, i64::from(shadow.window))
            .await?;
        let stored: StoredState = store.quality_state(route, candidate).await?;
        let now = now_ms();
        let (day, day_start) = utc_day(now);
        let spent = store
            .spent_between(route, Purpose::Shadow, day_start, day_start + DAY_MS)
            .await?;
        let alerting = stored.alert == Some(EventKind::AlertFired);
        let mut state = self.lock();
        if stored.seq >= state.seq {
            let changed = state.stored_window.as_ref() != Some(&scores);
            if changed || stored.seq > state.seq {
                let window: Vec<f64> = scores.iter().map(|ppm| *ppm as f64 / 1e6).collect();
                state.monitor = Monitor::restore(MonitorPolicy::of(shadow), &window, alerting);
                state.stored_window = Some(scores);
            }
            state.seq = stored.seq;
            let demoted = match stored.switch {
                Some(switch) => switch == EventKind::Demoted,
                None => shadow.on_proof == OnProof::Promote,
            };
            self.demoted.store(demoted, Ordering::Relaxed);
        }
        if state.day != day {
            state.day = day;
            state.spent = spent;
            state.reserved = Picodollars(0);
        } else if spent > state.spent {
            state.spent = spent;
        }
        self.publish(&state);
        Ok(())
    }

    /// The event a change is stored as.
    pub fn event(&self, change: &Change, ts_ms: i64) -> QualityEvent {
        let ppm = |x: f64| (x * 1e6).round() as i64;
        QualityEvent {
            route: self.route.name.clone(),
            candidate: self.shadow().candidate.name.clone(),
            seq: change.seq,
            ts_ms,
            event: change.event,
            model: self.shadow().candidate.model.clone(),
            agreement_ppm: ppm(change.evidence.agreement),
            low_ppm: ppm(change.evidence.interval.low),
            high_ppm: ppm(change.evidence.interval.high),
            samples: change.evidence.samples as i64,
        }
    }

    pub fn standing(&self) -> Standing {
        let shadow = self.shadow();
        let state = self.lock();
        let evidence = state.monitor.evidence();
        let seen = evidence.samples > 0;
        Standing {
            route: self.route.name.clone(),
            candidate: shadow.candidate.name.clone(),
            candidate_model: shadow.candidate.model.clone(),
            reference: shadow.reference.name.clone(),
            reference_model: shadow.reference.model.clone(),
            scorer: shadow.scorer,
            sample_rate: shadow.sample_rate,
            min_agreement: shadow.min_agreement,
            window: shadow.window,
            min_samples: shadow.min_samples,
            on_drift: shadow.on_drift,
            on_proof: shadow.on_proof,
            agreement: seen.then_some(evidence.agreement),
            interval: seen.then_some(evidence.interval),
            samples: evidence.samples,
            alerting: state.monitor.alerting(),
            demoted: self.demoted(),
            proven: state.monitor.proven(),
            spent_today_usd: state.spent.to_string(),
            daily_budget_usd: shadow.daily_budget_usd,
        }
    }

    fn publish(&self, state: &State) {
        let evidence = state.monitor.evidence();
        crate::metrics::quality(&crate::metrics::QualityState {
            route: &self.route.name,
            model: &self.shadow().candidate.model,
            agreement: evidence.agreement,
            interval: (evidence.interval.low, evidence.interval.high),
            samples: evidence.samples,
            alerting: state.monitor.alerting(),
            demoted: self.demoted(),
        });
    }
}

/// A shadow call's reservation, settled: released, and what the call really cost counted against
/// the day it was made.
impl Meter for Watch {
    fn settle(&self, day: i64, held: u64, used: u64) {
        let mut state = self.lock();
        // A call that began before midnight belongs to a day whose budget is closed.
        if state.day != day {
            return;
        }
        state.reserved =
            Picodollars::saturating((i128::from(state.reserved.0) - i128::from(held)).max(0));
        state.spent = Picodollars::saturating(i128::from(state.spent.0) + i128::from(used));
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
