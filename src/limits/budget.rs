//! Budgets: dollars a calendar month (UTC) of API spend, per route, per named key and in all
//! ([`crate::config::Budget`]). Each request reserves its worst case — its prompt's bytes (every
//! token is at least one byte) and its answer budget (`max_tokens` × `n`; else the tier's
//! `max_tokens`; else [`DEFAULT_ANSWER_TOKENS`]) at the price of the dearest API tier its chain may
//! call — against every budget that applies, and settles with what it really cost when it ends.
//! A request is admitted only while the month's spend, what requests in flight hold and its own
//! worst case fit the budget, so requests in parallel cannot all pass a check made before any of
//! them has cost anything: the spend passes the budget only by what reservations under-estimated.
//!
//! A budget that cannot hold a request decides by its `on_exhausted`: the API tiers are passed
//! over (`budget_spent`) and the route's local tiers serve, or the request is refused (429
//! `insufficient_quota`) — at once (`reject`), where the route has no local tier, or where its only
//! local tier is demoted by its shadow check (`local_only`; `local_any` serves from it anyway).
//!
//! The counts live in this process's memory: per budget, one set of atomics per month behind an
//! [`ArcSwap`] that a new month replaces, so serving threads share them without a lock and a
//! reservation settles into the month it was made in. They start from the ledger's account of
//! the month and take it up again every [`RESYNC`] ([`keep_in_step`]): calls of other replicas and
//! of `tierwise eval`, and corrections (`tierwise budget reset|adjust`). With a limits store,
//! replicas judge in one shared count ([`super::shared_budget`]) and the memory mirrors it, judging
//! alone only while the store does not answer. The alerts at `alert_at` and when a budget cannot
//! hold a request are noticed here, on the request path, by an atomic flag each, and announced by
//! [`crate::quality::alert`] once per budget and month — again after a correction that took the
//! spend back under the level.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::reservation::{Meter, Reservation, Unit};
use super::shared::Shared;
use super::shared_budget::{Account, HEARTBEAT, InStore, Reserved, SharedBudgets};
use crate::config::{Budget, BudgetScope, ChainTier, Config, OnExhausted, Route, Tier};
use crate::ledger::budget::{AlertLevel, Month, MonthSpend};
use crate::ledger::{Picodollars, Pricing, Store, Tokens};
use crate::openai::RequestBody;

/// The answer a request is assumed to take when neither it nor its tier bounds it.
pub const DEFAULT_ANSWER_TOKENS: u64 = 4096;
/// How often the counts take up the ledger's account of the month.
pub const RESYNC: Duration = Duration::from_secs(15);

/// Where budgets read the time: the system clock, or one a test moves.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as i64)
        }))
    }

    /// A clock that reads `ms`, which the caller moves.
    pub fn manual(ms: Arc<AtomicI64>) -> Clock {
        Clock(Arc::new(move || ms.load(Ordering::Relaxed)))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Every budget configured, for the life of the process.
pub struct Budgets {
    all: Option<Arc<BudgetMeter>>,
    routes: HashMap<String, Arc<BudgetMeter>>,
    keys: HashMap<String, Arc<BudgetMeter>>,
    clock: Clock,
    /// The count every replica shares, where `limits.store` is set.
    shared: Option<Arc<SharedBudgets>>,
    /// Where alerts go, taken once by the gateway's announcer.
    crossings: Mutex<Option<mpsc::UnboundedReceiver<Crossing>>>,
}

/// A budget reached one of its alert levels this month.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub scope: BudgetScope,
    pub month: Month,
    pub level: AlertLevel,
    /// The month's spend (calls and corrections) when it was noticed.
    pub spent: Picodollars,
    /// What requests in flight held then.
    pub held: Picodollars,
    /// The worst case of the request the budget could not hold; `None` where the spend itself
    /// reached the level.
    pub worst: Option<Picodollars>,
    /// The corrections of the month the level was armed after (0: none): a correction that takes
    /// the spend back under a level arms it again.
    pub armed_after: u64,
    pub budget: Budget,
}

/// What a request asks of budgets.
pub struct Spending<'a> {
    /// The route its cost is attributed to.
    pub route: Option<&'a Route>,
    /// The name of its client key (`keys.NAME`).
    pub key: Option<&'a str>,
    pub chain: &'a [ChainTier],
    pub request: &'a RequestBody<'a>,
    /// The route's shadow check has demoted its primary tier.
    pub primary_demoted: bool,
    /// The prices of the config serving the request (a reload may have changed them).
    pub pricing: &'a Pricing,
}

/// What budgets decided of a request.
#[derive(Debug)]
pub enum Verdict {
    /// Every budget that applies holds its worst case until it ends (none, where none applies or
    /// its chain calls no API tier).
    Held(Vec<Reservation>),
    /// A budget is spent: the API tiers are passed over, and also the demoted primary where
    /// `demoted_too`; the route's other local tiers serve.
    Moved { demoted_too: bool },
    /// A budget is spent and nothing may serve instead.
    Refused(Box<Spent>),
}

/// A request refused by a budget, as the client is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    pub scope: BudgetScope,
    pub month: Month,
    pub spent: Picodollars,
    pub budget: Budget,
    /// Why the route's local tiers could not serve instead, where that was tried.
    pub why: &'static str,
    /// What requests in flight held, and this one's worst case, when it was refused.
    pub held: Picodollars,
    pub worst: Picodollars,
    /// Whether the month is spent ([`MonthCounts::spent_for`]) rather than full for a moment
    /// (requests in flight) or for one request asking for more than most.
    pub month_spent: bool,
}

impl Budgets {
    /// Every budget of `config`, counted in memory, and shared through `store` where there is
    /// one (its tasks start on the current runtime).
    pub fn new(config: &Config, clock: Clock, store: Option<Arc<Shared>>) -> Budgets {
        let (notices, crossings) = mpsc::unbounded_channel();
        let now = clock.now_ms();
        let meter = |scope: BudgetScope, budget: Budget| {
            Arc::new(BudgetMeter::new(
                Arc::new(Info {
                    scope,
                    budget,
                    notices: notices.clone(),
                }),
                Month::of(now),
            ))
        };
        let mut budgets = Budgets {
            all: None,
            routes: HashMap::new(),
            keys: HashMap::new(),
            clock,
            shared: None,
            crossings: Mutex::new(Some(crossings)),
        };
        if let Some(store) = store
            && config.budgets().next().is_some()
        {
            budgets.shared = Some(SharedBudgets::start(store));
        }
        for (scope, budget) in config.budgets() {
            match &scope {
                BudgetScope::All => budgets.all = Some(meter(scope, budget)),
                BudgetScope::Route(name) => {
                    budgets
                        .routes
                        .insert(name.clone(), meter(scope.clone(), budget));
                }
                BudgetScope::Key(name) => {
                    budgets
                        .keys
                        .insert(name.clone(), meter(scope.clone(), budget));
                }
            }
        }
        budgets
    }

    /// The alerts noticed, for the one task that announces them; `None` after the first call.
    pub fn take_crossings(&self) -> Option<mpsc::UnboundedReceiver<Crossing>> {
        self.crossings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.routes.is_empty() && self.keys.is_empty()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn meter(&self, scope: &BudgetScope) -> Option<&Arc<BudgetMeter>> {
        match scope {
            BudgetScope::All => self.all.as_ref(),
            BudgetScope::Route(name) => self.routes.get(name),
            BudgetScope::Key(name) => self.keys.get(name),
        }
    }

    /// The budgets a call of `route` with key `key` counts against.
    fn applying(&self, route: Option<&str>, key: Option<&str>) -> Vec<&Arc<BudgetMeter>> {
        let route = route.and_then(|route| self.routes.get(route));
        let key = key.and_then(|key| self.keys.get(key));
        [route, key, self.all.as_ref()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Decides a request. On the request path: reads and changes atomics; with a limits store
    /// that answers, one round trip to it, bounded by `limits.store_timeout_ms`.
    pub async fn admit(&self, spending: &Spending<'_>) -> Verdict {
        let meters = self.applying(
            spending.route.map(|route| route.name.as_str()),
            spending.key,
        );
        if meters.is_empty() {
            return Verdict::Held(Vec::new());
        }
        let Some(worst) = self.worst_case(spending) else {
            // Only local tiers: nothing it does is billed.
            return Verdict::Held(Vec::new());
        };
        let now = self.clock.now_ms();
        let months: Vec<Arc<MonthCounts>> = meters.iter().map(|meter| meter.at(now)).collect();
        if let Some(shared) = self.shared.as_ref().filter(|shared| shared.usable())
            && let Some(verdict) = self.admit_shared(shared, spending, &months, worst).await
        {
            return verdict;
        }
        match reserve_all(&months, worst, self.shared.as_ref()) {
            Ok(held) => Verdict::Held(held),
            Err(()) => self.exhausted(spending, &months, worst, &|counts| {
                (!counts.fits(worst)).then(|| counts.reserved.load(Ordering::Acquire))
            }),
        }
    }

    /// Judges in the count every replica shares; `None` when the store did not answer (the
    /// request is judged from memory).
    async fn admit_shared(
        &self,
        shared: &Arc<SharedBudgets>,
        spending: &Spending<'_>,
        months: &[Arc<MonthCounts>],
        worst: i64,
    ) -> Option<Verdict> {
        let month = months[0].month;
        let keys: Vec<(String, i64)> = months
            .iter()
            .map(|counts| {
                (
                    SharedBudgets::key(&counts.info.scope, counts.month),
                    counts.info.budget.monthly_pusd,
                )
            })
            .collect();
        let expire_at = SharedBudgets::expire_at(month);
        match shared.reserve(&keys, worst, expire_at).await? {
            Reserved::Taken { field, budgets } => {
                let held = months
                    .iter()
                    .zip(budgets)
                    .zip(keys)
                    .map(|((counts, state), (key, _))| {
                        // Mirrored in memory, which judges alone while the store is away.
                        counts.reserved.fetch_add(worst, Ordering::AcqRel);
                        counts.smallest_held.fetch_min(worst, Ordering::AcqRel);
                        counts.mirror(&state);
                        let meter: Arc<dyn Meter> = Arc::new(HeldInStore {
                            counts: counts.clone(),
                            key,
                            field: Some(field.clone()),
                            expire_at,
                            shared: shared.clone(),
                        });
                        Reservation::new(meter, Unit::Picodollars, counts.month.0, worst as u64)
                    })
                    .collect();
                Some(Verdict::Held(held))
            }
            Reserved::Refused(budgets) => {
                let fits: Vec<(Arc<MonthCounts>, InStore)> = months
                    .iter()
                    .zip(budgets)
                    .map(|(counts, state)| {
                        counts.mirror(&state);
                        (counts.clone(), state)
                    })
                    .collect();
                // What every replica holds, as the store counted it, is what the alert tells.
                let unfit = |counts: &MonthCounts| {
                    fits.iter()
                        .find(|(known, _)| std::ptr::eq(&**known, counts))
                        .filter(|(_, state)| !state.fits)
                        .map(|(_, state)| state.held)
                };
                Some(self.exhausted(spending, months, worst, &unfit))
            }
        }
    }

    /// Some budget cannot hold `worst`: the strictest `on_exhausted` among those that cannot
    /// decides, and each of them alerts that it is spent.
    fn exhausted(
        &self,
        spending: &Spending<'_>,
        months: &[Arc<MonthCounts>],
        worst: i64,
        unfit: &dyn Fn(&MonthCounts) -> Option<i64>,
    ) -> Verdict {
        let mut deciding: Option<&Arc<MonthCounts>> = None;
        for (counts, held) in months
            .iter()
            .filter_map(|counts| Some((counts, unfit(counts)?)))
        {
            counts.turned_away(worst, held);
            let strictness = |counts: &MonthCounts| match counts.info.budget.on_exhausted {
                OnExhausted::Reject => 2,
                OnExhausted::LocalOnly => 1,
                OnExhausted::LocalAny => 0,
            };
            if deciding.is_none_or(|known| strictness(counts) > strictness(known)) {
                deciding = Some(counts);
            }
        }
        // Every one fitted once the others had given theirs back: the race was lost to requests
        // now settled. Judged as spent all the same: it did not fit when it was asked.
        let deciding = deciding.unwrap_or(&months[0]);
        let refuse = |why: &'static str| {
            Verdict::Refused(Box::new(Spent {
                scope: deciding.info.scope.clone(),
                month: deciding.month,
                spent: deciding.spent(),
                budget: deciding.info.budget,
                why,
                held: Picodollars(deciding.reserved.load(Ordering::Acquire).max(0)),
                worst: Picodollars(worst),
                month_spent: deciding.spent_for(worst).is_some(),
            }))
        };
        let policy = deciding.info.budget.on_exhausted;
        if policy == OnExhausted::Reject {
            return refuse("");
        }
        let locals: Vec<usize> = spending
            .chain
            .iter()
            .enumerate()
            .filter(|(_, step)| step.tier.is_local())
            .map(|(at, _)| at)
            .collect();
        let demoted_too = policy == OnExhausted::LocalOnly
            && spending.primary_demoted
            && locals.first() == Some(&0);
        let serving = locals.len() - usize::from(demoted_too);
        match (serving, demoted_too) {
            (0, false) => refuse("the route has no local tier to serve instead"),
            (0, true) => refuse(
                "its local tier is demoted by its shadow check, known to answer worse (on_exhausted = \"local_any\" serves from it anyway)",
            ),
            _ => Verdict::Moved { demoted_too },
        }
    }

    /// The most the request can cost on any API tier of its chain; `None` when it has none.
    fn worst_case(&self, spending: &Spending<'_>) -> Option<i64> {
        let request = spending.request;
        let prompt = request.byte_len() as u64;
        let choices = request
            .field("n")
            .and_then(|n| serde_json::from_str::<u64>(n.get()).ok())
            .unwrap_or(1)
            .max(1);
        spending
            .chain
            .iter()
            .filter(|step| !step.tier.is_local())
            .map(|step| {
                let answer = request
                    .max_tokens()
                    .or(step.tier.max_tokens.map(u64::from))
                    .unwrap_or(DEFAULT_ANSWER_TOKENS)
                    .saturating_mul(choices);
                worst_on(spending.pricing, &step.tier, prompt, answer)
            })
            .max()
    }

    /// Holds a shadow call's worst case against the budgets of its route and of all API spend;
    /// `None` when one of them cannot hold it (the check is skipped, `budget_spent`).
    pub fn reserve_call(&self, route: &str, worst: Picodollars) -> Option<Vec<Reservation>> {
        let meters = self.applying(Some(route), None);
        let now = self.clock.now_ms();
        let months: Vec<Arc<MonthCounts>> = meters.iter().map(|meter| meter.at(now)).collect();
        reserve_all(&months, worst.0.max(0), self.shared.as_ref()).ok()
    }

    /// A budget's spend and what requests in flight hold of it, as this process counts them now.
    pub fn live(&self, scope: &BudgetScope) -> Option<(Picodollars, Picodollars)> {
        let counts = self.meter(scope)?.at(self.clock.now_ms());
        Some((
            counts.spent(),
            Picodollars(counts.reserved.load(Ordering::Acquire).max(0)),
        ))
    }

    /// A correction just stored in the ledger, counted at once rather than at the next resync.
    pub fn corrected(&self, scope: &BudgetScope, month: Month, delta: Picodollars) {
        if let Some(meter) = self.meter(scope) {
            let counts = meter.at(self.clock.now_ms());
            if counts.month == month {
                counts.adjusted.fetch_add(delta.0, Ordering::AcqRel);
                counts.corrections.fetch_add(1, Ordering::AcqRel);
                counts.check_alerts();
            }
        }
    }

    /// Takes up the ledger's account of `month`: its calls where they are more than this process
    /// counted (other replicas', `tierwise eval`'s), its corrections as stored, and the alerts
    /// already announced.
    pub fn take_up(
        &self,
        month: Month,
        spend: &MonthSpend,
        announced: &[(BudgetScope, AlertLevel, u64)],
    ) {
        let now = self.clock.now_ms();
        for meter in self
            .all
            .iter()
            .chain(self.routes.values())
            .chain(self.keys.values())
        {
            let counts = meter.at(now);
            if counts.month != month {
                continue;
            }
            let scope = &meter.info.scope;
            let corrections: Vec<i64> = spend
                .corrections
                .iter()
                .filter(|(known, _)| known == scope)
                .map(|(_, after)| after.0)
                .collect();
            for level in [AlertLevel::AlertAt, AlertLevel::Spent] {
                // A level is armed again by the last correction that took the spend under it.
                let threshold = counts.threshold(level);
                let armed_after = corrections
                    .iter()
                    .rposition(|after| *after < threshold)
                    .map_or(0, |at| at as u64 + 1);
                let bit = level_bit(level);
                if counts.arms[usize::from(bit - 1)].swap(armed_after, Ordering::AcqRel)
                    != armed_after
                {
                    counts.alerted.fetch_and(!bit, Ordering::AcqRel);
                }
                if announced
                    .iter()
                    .any(|known| (&known.0, known.1, known.2) == (scope, level, armed_after))
                {
                    counts.alerted.fetch_or(bit, Ordering::AcqRel);
                }
            }
            counts
                .calls
                .fetch_max(spend.calls.of(scope).0, Ordering::AcqRel);
            counts
                .adjusted
                .store(spend.adjustments.of(scope).0, Ordering::Release);
            counts
                .corrections
                .store(corrections.len() as u64, Ordering::Release);
            counts.check_alerts();
        }
    }

    /// Gives the limits store this replica's account of `month` (the ledger's, taken up, and what
    /// it counted since), and mirrors what the store holds after; nothing without a store, or
    /// while it does not answer.
    pub async fn give_account(&self, month: Month) {
        let Some(shared) = &self.shared else {
            return;
        };
        let now = self.clock.now_ms();
        let months: Vec<Arc<MonthCounts>> = self
            .all
            .iter()
            .chain(self.routes.values())
            .chain(self.keys.values())
            .map(|meter| meter.at(now))
            .filter(|counts| counts.month == month)
            .collect();
        let accounts: Vec<Account> = months
            .iter()
            .map(|counts| Account {
                key: SharedBudgets::key(&counts.info.scope, month),
                calls: counts.calls.load(Ordering::Acquire),
                adjusted: counts.adjusted.load(Ordering::Acquire),
                corrections: counts.corrections.load(Ordering::Acquire),
                expire_at: SharedBudgets::expire_at(month),
            })
            .collect();
        if let Some(states) = shared.give_account(&accounts).await {
            for (counts, state) in months.iter().zip(states) {
                counts.mirror(&state);
            }
        }
    }

    /// Whether budgets are judged in the count replicas share; `true` where there is no such
    /// count to wait for (no budgets, no store).
    pub fn shared_usable(&self) -> bool {
        self.shared.as_ref().is_none_or(|shared| shared.usable())
    }

    /// Waits until the limits store comes back; never, without one.
    async fn store_came_back(&self) {
        match &self.shared {
            Some(shared) => shared.store().came_back().await,
            None => std::future::pending().await,
        }
    }

    /// Sets each budget's gauges; called when `/metrics` is scraped.
    pub fn publish(&self) {
        let now = self.clock.now_ms();
        for meter in self
            .all
            .iter()
            .chain(self.routes.values())
            .chain(self.keys.values())
        {
            let counts = meter.at(now);
            let scope = &meter.info.scope;
            crate::metrics::budget(
                scope.kind(),
                scope.name(),
                counts.spent(),
                Picodollars(counts.reserved.load(Ordering::Acquire).max(0)),
                meter.info.budget.monthly_pusd,
            );
        }
    }
}

/// Holds `worst` of every one of `months`, or of none, in memory; with a limits store, what the
/// reservations are settled with is added to the shared count too.
fn reserve_all(
    months: &[Arc<MonthCounts>],
    worst: i64,
    shared: Option<&Arc<SharedBudgets>>,
) -> Result<Vec<Reservation>, ()> {
    for (at, counts) in months.iter().enumerate() {
        if !counts.try_reserve(worst) {
            for taken in &months[..at] {
                taken.reserved.fetch_sub(worst, Ordering::AcqRel);
            }
            return Err(());
        }
    }
    Ok(months
        .iter()
        .map(|counts| {
            let meter: Arc<dyn Meter> = match shared {
                Some(shared) => Arc::new(HeldInStore {
                    counts: counts.clone(),
                    key: SharedBudgets::key(&counts.info.scope, counts.month),
                    field: None,
                    expire_at: SharedBudgets::expire_at(counts.month),
                    shared: shared.clone(),
                }),
                None => counts.clone(),
            };
            Reservation::new(meter, Unit::Picodollars, counts.month.0, worst as u64)
        })
        .collect())
}

/// Reads the ledger's account of the month every [`RESYNC`] and hands it to `budgets`; with a
/// limits store, gives it this replica's account every [`HEARTBEAT`] (and the ledger's at once
/// when it comes back); for as long as the gateway runs. A ledger that does not answer leaves the
/// counts as they are.
pub async fn keep_in_step(budgets: Arc<Budgets>, store: Store) {
    let mut failing = false;
    let mut read_at: Option<tokio::time::Instant> = None;
    loop {
        if read_at.is_none_or(|at| at.elapsed() >= RESYNC) {
            read_at = Some(tokio::time::Instant::now());
            let taken_up = take_up_ledger(&budgets, &store).await;
            if taken_up.is_err() {
                // The ledger away is no reason to keep the shared count from what this replica saw.
                budgets.give_account(Month::of(budgets.now_ms())).await;
            }
            match taken_up {
                // Said once per outage, not every 15 s of it.
                Err(err) if !failing => {
                    tracing::warn!(
                        "cannot read this month's spend from the ledger: {err}; budgets count on from what this replica has seen until it answers"
                    );
                    failing = true;
                }
                Err(_) => {}
                Ok(()) if failing => {
                    tracing::info!("the ledger answers again: budgets take up its month's spend");
                    failing = false;
                }
                Ok(()) => {}
            }
        } else {
            budgets.give_account(Month::of(budgets.now_ms())).await;
        }
        let pause = if budgets.shared.is_some() {
            HEARTBEAT
        } else {
            RESYNC
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // The store back (perhaps empty) is given the ledger's account at once.
            () = budgets.store_came_back() => read_at = None,
        }
    }
}

/// Reads the month's spend and announced alerts from the ledger into `budgets`.
pub async fn take_up_ledger(
    budgets: &Budgets,
    store: &Store,
) -> Result<(), crate::ledger::LedgerError> {
    if budgets.is_empty() {
        return Ok(());
    }
    let now = budgets.now_ms();
    let month = Month::of(now);
    let spend = store.month_spend(month, now).await?;
    let announced = store.budget_alerts(month).await?;
    budgets.take_up(month, &spend, &announced);
    budgets.give_account(month).await;
    Ok(())
}

/// What does not change about a budget.
#[derive(Debug)]
struct Info {
    scope: BudgetScope,
    budget: Budget,
    notices: mpsc::UnboundedSender<Crossing>,
}

/// One budget: its counts for the month now running, replaced when a new one begins.
struct BudgetMeter {
    info: Arc<Info>,
    current: ArcSwap<MonthCounts>,
}

impl BudgetMeter {
    fn new(info: Arc<Info>, month: Month) -> BudgetMeter {
        BudgetMeter {
            current: ArcSwap::from_pointee(MonthCounts::new(info.clone(), month)),
            info,
        }
    }

    /// The counts of the month `now_ms` falls in: a new month starts from nothing (the ledger's
    /// corrections for it, if any, come at the next resync).
    fn at(&self, now_ms: i64) -> Arc<MonthCounts> {
        let current = self.current.load_full();
        if (current.start_ms..current.end_ms).contains(&now_ms) {
            return current;
        }
        let month = Month::of(now_ms);
        let fresh = Arc::new(MonthCounts::new(self.info.clone(), month));
        let seen = self.current.compare_and_swap(&current, fresh.clone());
        if Arc::ptr_eq(&seen, &current) {
            fresh
        } else {
            // Another thread began the month first: its counts are the month's.
            arc_swap::Guard::into_inner(seen)
        }
    }
}

/// Alerts already noticed this month, one bit each.
fn level_bit(level: AlertLevel) -> u8 {
    match level {
        AlertLevel::AlertAt => 1,
        AlertLevel::Spent => 2,
    }
}

/// One budget's month, in picodollars.
struct MonthCounts {
    info: Arc<Info>,
    month: Month,
    start_ms: i64,
    end_ms: i64,
    /// What the month's calls cost: settled here, or the ledger's sum where that is more.
    calls: AtomicI64,
    /// The ledger's corrections (`tierwise budget reset|adjust`).
    adjusted: AtomicI64,
    /// What requests in flight hold.
    reserved: AtomicI64,
    /// How many corrections `adjusted` sums.
    corrections: AtomicU64,
    /// [`level_bit`]s of the alerts noticed.
    alerted: AtomicU8,
    /// Per level ([`level_bit`] - 1), the corrections it was armed again after.
    arms: [AtomicU64; 2],
    /// The smallest worst case held this month: what a usual request needs.
    smallest_held: AtomicI64,
}

impl MonthCounts {
    fn new(info: Arc<Info>, month: Month) -> MonthCounts {
        MonthCounts {
            info,
            month,
            start_ms: month.start_ms(),
            end_ms: month.end_ms(),
            calls: AtomicI64::new(0),
            adjusted: AtomicI64::new(0),
            reserved: AtomicI64::new(0),
            corrections: AtomicU64::new(0),
            alerted: AtomicU8::new(0),
            arms: [AtomicU64::new(0), AtomicU64::new(0)],
            smallest_held: AtomicI64::new(i64::MAX),
        }
    }

    /// Takes up the count every replica shares, as the store just gave it: its calls where they
    /// are more than this replica counted, its corrections where it has seen more of them.
    fn mirror(&self, state: &InStore) {
        self.calls.fetch_max(state.calls, Ordering::AcqRel);
        if state.corrections >= self.corrections.load(Ordering::Acquire) {
            self.adjusted.store(state.adjusted, Ordering::Release);
            self.corrections
                .fetch_max(state.corrections, Ordering::AcqRel);
        }
        self.check_alerts();
    }

    /// The spend at which `level` alerts.
    fn threshold(&self, level: AlertLevel) -> i64 {
        let budget = &self.info.budget;
        match level {
            AlertLevel::AlertAt => (budget.monthly_pusd as f64 * budget.alert_at).ceil() as i64,
            AlertLevel::Spent => budget.monthly_pusd,
        }
    }

    fn spent(&self) -> Picodollars {
        Picodollars::saturating(
            i128::from(self.calls.load(Ordering::Acquire))
                + i128::from(self.adjusted.load(Ordering::Acquire)),
        )
    }

    /// Whether `amount` more fits beside the spend and what is held.
    fn fits(&self, amount: i64) -> bool {
        let reserved = self.reserved.load(Ordering::Acquire);
        i128::from(self.spent().0) + i128::from(reserved) + i128::from(amount)
            <= i128::from(self.info.budget.monthly_pusd)
    }

    /// Holds `amount` if it fits beside the spend and what is held, in one compare-and-swap: two
    /// requests racing cannot both take the last of the budget, and no amount (a client may ask
    /// for 2^60 tokens) can wrap the count around.
    fn try_reserve(&self, amount: i64) -> bool {
        let limit = i128::from(self.info.budget.monthly_pusd);
        let taken = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                let after = i128::from(reserved) + i128::from(amount);
                (i128::from(self.spent().0) + after <= limit)
                    .then(|| i64::try_from(after).ok())
                    .flatten()
            })
            .is_ok();
        if taken {
            self.smallest_held.fetch_min(amount, Ordering::AcqRel);
        }
        taken
    }

    /// Whether the month is spent for a request refused with `worst`: the settled spend, with
    /// nothing held, cannot hold a usual request — the smaller of `worst` and the smallest worst
    /// case held this month. Requests in flight give back what they hold, and one request asking
    /// for more than most does not make the month spent. Returns that usual worst case.
    fn spent_for(&self, worst: i64) -> Option<i64> {
        let usual = worst.min(self.smallest_held.load(Ordering::Acquire));
        (i128::from(self.spent().0) + i128::from(usual) > i128::from(self.info.budget.monthly_pusd))
            .then_some(usual)
    }

    /// The budget could not hold a request's `worst` case while requests in flight held `held`:
    /// the month's one spent alert is sent only where the month is spent
    /// ([`MonthCounts::spent_for`]), not merely busy.
    fn turned_away(&self, worst: i64, held: i64) {
        if let Some(usual) = self.spent_for(worst) {
            self.notice(AlertLevel::Spent, Some((usual, held)));
        }
    }

    fn check_alerts(&self) {
        let spent = self.spent().0;
        for level in [AlertLevel::AlertAt, AlertLevel::Spent] {
            if spent > 0 && spent >= self.threshold(level) {
                self.notice(level, None);
            }
        }
    }

    /// Sends the alert once a month (once more after each correction that arms it again): the
    /// first thread to set its bit sends it.
    /// `refused`: the worst case that did not fit, and what requests in flight held then.
    fn notice(&self, level: AlertLevel, refused: Option<(i64, i64)>) {
        let bit = level_bit(level);
        if self.alerted.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return;
        }
        let _ = self.info.notices.send(Crossing {
            scope: self.info.scope.clone(),
            month: self.month,
            level,
            spent: self.spent(),
            held: Picodollars(
                refused
                    .map_or_else(|| self.reserved.load(Ordering::Acquire), |(_, held)| held)
                    .max(0),
            ),
            worst: refused.map(|(worst, _)| Picodollars(worst)),
            armed_after: self.arms[usize::from(bit - 1)].load(Ordering::Acquire),
            budget: self.info.budget,
        });
    }
}

/// A reservation in the count every replica shares (held there, or judged from memory while the
/// store was away): settled in memory at once, and in the store by its settlement task.
struct HeldInStore {
    counts: Arc<MonthCounts>,
    key: String,
    /// The hold field in the store; `None` where the store holds nothing for it.
    field: Option<String>,
    expire_at: i64,
    shared: Arc<SharedBudgets>,
}

impl Meter for HeldInStore {
    fn settle(&self, period: i64, held: u64, used: u64) {
        self.counts.settle(period, held, used);
        let amount = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.shared.settle(
            &self.key,
            self.field.as_deref(),
            if self.field.is_some() {
                amount(held)
            } else {
                0
            },
            amount(used),
            self.expire_at,
        );
    }
}

/// A request's reservation settled: what it cost counts (added before the hold is given back, so
/// that the two never both look smaller than they are), and the alerts are checked.
impl Meter for MonthCounts {
    fn settle(&self, _month: i64, held: u64, used: u64) {
        let used = i64::try_from(used).unwrap_or(i64::MAX);
        let held = i64::try_from(held).unwrap_or(i64::MAX);
        let _ = self
            .calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |calls| {
                Some(calls.saturating_add(used))
            });
        self.reserved.fetch_sub(held, Ordering::AcqRel);
        self.check_alerts();
    }
}

/// The prompt at the dearer of its input price and the price of writing it to a provider's
/// prompt cache (Anthropic's, dearer than input), and the answer.
fn worst_on(pricing: &Pricing, tier: &Tier, prompt: u64, answer: u64) -> i64 {
    let cost = |cache_write: u64| {
        let tokens = Tokens {
            input: prompt,
            cached: 0,
            cache_write,
            output: answer,
            estimated: false,
        };
        // A model without a price has no budget over it (the configuration refuses one).
        pricing
            .price(tier, None, &tokens)
            .cost
            .map_or(0, |cost| cost.0.max(0))
    };
    cost(0).max(cost(prompt))
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::limits::reservation::Used;
    use crate::openai::Endpoint;

    /// 2030-01-31T23:59:00Z.
    const JAN_END: i64 = 1_896_134_340_000;

    fn config(route_budget: &str, all_budget: &str) -> Config {
        let toml = format!(
            r#"
[providers.openai]
base_url = "http://127.0.0.1:9/v1"
[providers.gpu]
base_url = "http://127.0.0.1:9/v1"
fixed_monthly_usd = 0
[tiers]
mini = {{ provider = "openai", model = "gpt-4o-mini" }}
local = {{ provider = "gpu", model = "m" }}
[routes.r]
kind = "chat"
tiers = ["mini", "local"]
budget = {route_budget}
[routes.api_only]
kind = "chat"
tiers = ["mini"]
{all_budget}
"#
        );
        Config::parse(&toml, std::path::Path::new("t.toml"), &|_| None).unwrap()
    }

    /// 83 bytes of body and 1000 answer tokens on gpt-4o-mini: 83 × $0.15 + 1000 × $0.60 per
    /// million, $0.00061245.
    const BODY: &[u8] =
        br#"{"model":"r","max_tokens":1000,"messages":[{"role":"user","content":"hello there"}]}"#;
    const WORST: i64 = 612_450_000;

    fn admit(budgets: &Budgets, config: &Config, route: &str, demoted: bool) -> Verdict {
        let route = config.routes.iter().find(|r| r.name == route).unwrap();
        let request = RequestBody::parse(Endpoint::ChatCompletions, BODY).unwrap();
        budgets
            .admit(&Spending {
                route: Some(route),
                key: None,
                chain: &route.chain,
                request: &request,
                primary_demoted: demoted,
                pricing: &Pricing::new(config),
            })
            .now_or_never()
            .expect("without a store, judged in memory at once")
    }

    fn clock_at(ms: i64) -> (Clock, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(ms));
        (Clock::manual(now.clone()), now)
    }

    #[test]
    fn the_worst_case_is_the_prompts_bytes_and_the_answer_budget_at_the_dearest_api_price() {
        let config = config("{ monthly_usd = 1 }", "");
        let (clock, _) = clock_at(JAN_END);
        let budgets = Budgets::new(&config, clock, None);
        assert_eq!(
            RequestBody::parse(Endpoint::ChatCompletions, BODY)
                .unwrap()
                .byte_len(),
            83
        );
        let Verdict::Held(held) = admit(&budgets, &config, "r", false) else {
            panic!("a dollar holds it")
        };
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].amount(), WORST as u64);
    }

    /// A prompt that a provider may write to its prompt cache is held at the cache-write price
    /// where that is dearer than input.
    #[test]
    fn a_prompt_is_held_at_the_dearer_of_input_and_cache_write() {
        let toml = r#"
[providers.anthropic]
base_url = "http://127.0.0.1:9/v1"
[tiers]
claude = { provider = "anthropic", model = "claude-x" }
[prices."claude-x"]
input = 3.0
cache_write = 3.75
output = 15.0
[routes.r]
kind = "chat"
tiers = ["claude"]
budget = { monthly_usd = 1 }
"#;
        let config = Config::parse(toml, std::path::Path::new("t.toml"), &|_| None).unwrap();
        let budgets = Budgets::new(&config, clock_at(JAN_END).0, None);
        let Verdict::Held(held) = admit(&budgets, &config, "r", false) else {
            panic!("a dollar holds it")
        };
        assert_eq!(held[0].amount(), 83 * 3_750_000 + 1000 * 15_000_000);
    }

    /// Eight threads race for a budget that holds exactly ten worst cases: ten are admitted, and
    /// once they have cost what they really cost, the spend is within the budget.
    #[test]
    fn racing_requests_never_hold_more_than_the_budget() {
        let worst = WORST;
        let usd = (10 * worst) as f64 / 1e12;
        let config = config(&format!("{{ monthly_usd = {usd} }}"), "");
        let (clock, _) = clock_at(JAN_END);
        let budgets = Budgets::new(&config, clock, None);
        let held: Vec<Reservation> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let mut held = Vec::new();
                        for _ in 0..50 {
                            if let Verdict::Held(mut one) = admit(&budgets, &config, "r", false) {
                                held.append(&mut one);
                            }
                        }
                        held
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|thread| thread.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 10);
        let scope = BudgetScope::Route("r".into());
        assert_eq!(
            budgets.live(&scope),
            Some((Picodollars(0), Picodollars(10 * worst)))
        );
        for reservation in held {
            reservation.settle(worst as u64 - 1_000);
        }
        let (spent, reserved) = budgets.live(&scope).unwrap();
        assert_eq!(
            (spent, reserved),
            (Picodollars(10 * (worst - 1_000)), Picodollars(0))
        );
        assert!(spent.0 <= (usd * 1e12) as i64);
    }

    /// A request asking for more tokens than any budget could pay for is moved, and its worst
    /// case (saturated at the largest amount) does not wrap the count around for the next.
    #[test]
    fn an_absurd_answer_budget_is_moved_and_wraps_nothing() {
        let config = config("{ monthly_usd = 1 }", "");
        let budgets = Budgets::new(&config, clock_at(JAN_END).0, None);
        let route = config.routes.iter().find(|r| r.name == "r").unwrap();
        let huge = br#"{"model":"r","max_tokens":1152921504606846976,"n":128,"messages":[{"role":"user","content":"x"}]}"#;
        let request = RequestBody::parse(Endpoint::ChatCompletions, huge).unwrap();
        let held = admit(&budgets, &config, "r", false);
        assert!(matches!(held, Verdict::Held(_)));
        for _ in 0..3 {
            let verdict = budgets
                .admit(&Spending {
                    route: Some(route),
                    key: None,
                    chain: &route.chain,
                    request: &request,
                    primary_demoted: false,
                    pricing: &Pricing::new(&config),
                })
                .now_or_never()
                .unwrap();
            assert!(matches!(verdict, Verdict::Moved { .. }), "{verdict:?}");
        }
        assert_eq!(
            budgets.live(&BudgetScope::Route("r".into())),
            Some((Picodollars(0), Picodollars(WORST)))
        );
    }

    #[test]
    fn a_spent_budget_moves_to_local_or_refuses_as_configured() {
        let config = config(
            "{ monthly_usd = 0, on_exhausted = \"local_only\" }",
            "[budget]\nmonthly_usd = 0\non_exhausted = \"local_any\"",
        );
        let (clock, _) = clock_at(JAN_END);
        let budgets = Budgets::new(&config, clock, None);
        assert!(matches!(
            admit(&budgets, &config, "r", false),
            Verdict::Moved { demoted_too: false }
        ));
        // The route's local tier is its fallback, not its demoted primary: it serves.
        assert!(matches!(
            admit(&budgets, &config, "r", true),
            Verdict::Moved { demoted_too: false }
        ));
        let Verdict::Refused(spent) = admit(&budgets, &config, "api_only", false) else {
            panic!("no local tier: refused")
        };
        assert_eq!(spent.scope, BudgetScope::All);
        assert_eq!(spent.why, "the route has no local tier to serve instead");

        let reject = self::config("{ monthly_usd = 0, on_exhausted = \"reject\" }", "");
        let budgets = Budgets::new(&reject, clock_at(JAN_END).0, None);
        let Verdict::Refused(spent) = admit(&budgets, &reject, "r", false) else {
            panic!("reject refuses")
        };
        assert_eq!(spent.scope, BudgetScope::Route("r".into()));
    }

    #[test]
    fn a_demoted_local_primary_does_not_serve_a_spent_budget_unless_local_any() {
        let toml = |policy: &str| {
            format!(
                r#"
[providers.openai]
base_url = "http://127.0.0.1:9/v1"
[providers.gpu]
base_url = "http://127.0.0.1:9/v1"
fixed_monthly_usd = 0
[tiers]
mini = {{ provider = "openai", model = "gpt-4o-mini" }}
local = {{ provider = "gpu", model = "m" }}
[routes.r]
kind = "chat"
tiers = ["local", "mini"]
budget = {{ monthly_usd = 0, on_exhausted = "{policy}" }}
"#
            )
        };
        let only = Config::parse(&toml("local_only"), std::path::Path::new("t.toml"), &|_| {
            None
        })
        .unwrap();
        let budgets = Budgets::new(&only, clock_at(JAN_END).0, None);
        assert!(matches!(
            admit(&budgets, &only, "r", false),
            Verdict::Moved { demoted_too: false }
        ));
        let Verdict::Refused(spent) = admit(&budgets, &only, "r", true) else {
            panic!("a demoted local tier does not serve")
        };
        assert!(spent.why.contains("demoted"), "{}", spent.why);
        let any = Config::parse(&toml("local_any"), std::path::Path::new("t.toml"), &|_| {
            None
        })
        .unwrap();
        let budgets = Budgets::new(&any, clock_at(JAN_END).0, None);
        assert!(matches!(
            admit(&budgets, &any, "r", true),
            Verdict::Moved { demoted_too: false }
        ));
    }

    /// A month's end starts the next from nothing; a request admitted in the old month settles
    /// into the old month.
    #[test]
    fn a_new_month_starts_from_nothing() {
        let config = config("{ monthly_usd = 0.001 }", "");
        let (clock, now) = clock_at(JAN_END);
        let budgets = Budgets::new(&config, clock, None);
        let scope = BudgetScope::Route("r".into());
        let Verdict::Held(first) = admit(&budgets, &config, "r", false) else {
            panic!("fits")
        };
        assert!(matches!(
            admit(&budgets, &config, "r", false),
            Verdict::Moved { .. }
        ));
        now.store(JAN_END + 60_000, Ordering::Relaxed);
        assert_eq!(budgets.live(&scope), Some((Picodollars(0), Picodollars(0))));
        let Verdict::Held(second) = admit(&budgets, &config, "r", false) else {
            panic!("February has its own budget")
        };
        let mut hold = crate::limits::Hold::default();
        for reservation in first.into_iter().chain(second) {
            hold.add(reservation);
        }
        hold.settle(Used {
            tokens: 0,
            picodollars: 500_000_000,
        });
        // January's request counted in January: February holds only its own.
        assert_eq!(
            budgets.live(&scope),
            Some((Picodollars(500_000_000), Picodollars(0)))
        );
    }

    /// Each level alerts once a month, and not at all once the ledger says it was announced.
    #[test]
    fn alerts_are_noticed_once_a_month() {
        let config = config("{ monthly_usd = 0.002, alert_at = 0.5 }", "");
        let (clock, now) = clock_at(JAN_END);
        let budgets = Budgets::new(&config, clock, None);
        let mut crossings = budgets.take_crossings().unwrap();
        let spend = |amount: u64| {
            let Verdict::Held(held) = admit(&budgets, &config, "r", false) else {
                panic!("fits")
            };
            for reservation in held {
                reservation.settle(amount);
            }
        };
        spend(400_000_000);
        assert!(crossings.try_recv().is_err(), "20% is under the alert");
        spend(700_000_000);
        let crossing = crossings.try_recv().unwrap();
        assert_eq!(crossing.level, AlertLevel::AlertAt);
        assert_eq!(crossing.spent, Picodollars(1_100_000_000));
        spend(800_000_000);
        assert!(crossings.try_recv().is_err(), "alert_at is announced once");
        // It no longer holds a worst case: spent, once.
        for _ in 0..2 {
            assert!(matches!(
                admit(&budgets, &config, "r", false),
                Verdict::Moved { .. }
            ));
        }
        assert_eq!(crossings.try_recv().unwrap().level, AlertLevel::Spent);
        assert!(crossings.try_recv().is_err());
        // February: the ledger says another replica announced its alert_at already.
        now.store(JAN_END + 60_000, Ordering::Relaxed);
        let february = Month::of(JAN_END + 60_000);
        let mut ledger = MonthSpend::default();
        ledger
            .calls
            .routes
            .insert("r".into(), Picodollars(700_000_000));
        budgets.take_up(
            february,
            &ledger,
            &[(BudgetScope::Route("r".into()), AlertLevel::AlertAt, 0)],
        );
        assert!(crossings.try_recv().is_err());
        assert_eq!(
            budgets.live(&BudgetScope::Route("r".into())).unwrap().0,
            Picodollars(700_000_000),
            "another replica's spend, taken up"
        );
    }

    /// The spent alert fires at the first request a budget cannot hold once its settled spend,
    /// with nothing held, cannot hold a usual request, and says how much is really spent (short of
    /// the budget), what is held and the worst case that did not fit.
    #[test]
    fn the_spent_alert_says_what_is_really_spent() {
        let config = config("{ monthly_usd = 0.002 }", "");
        let budgets = Budgets::new(&config, clock_at(JAN_END).0, None);
        let mut crossings = budgets.take_crossings().unwrap();
        let Verdict::Held(first) = admit(&budgets, &config, "r", false) else {
            panic!("fits")
        };
        let Verdict::Held(in_flight) = admit(&budgets, &config, "r", false) else {
            panic!("fits")
        };
        // The first costs more than it held: $0.0015 spent (75%, under the alert) and one worst
        // case ($0.00061245) held; the settled spend alone can no longer hold a usual request.
        for reservation in first {
            reservation.settle(1_500_000_000);
        }
        assert!(matches!(
            admit(&budgets, &config, "r", false),
            Verdict::Moved { .. }
        ));
        let crossing = crossings.try_recv().unwrap();
        assert_eq!(
            (
                crossing.level,
                crossing.spent,
                crossing.held,
                crossing.worst
            ),
            (
                AlertLevel::Spent,
                Picodollars(1_500_000_000),
                Picodollars(WORST),
                Some(Picodollars(WORST))
            )
        );
        drop(in_flight);
    }

    /// A correction that takes the spend back under a level arms it again: the next crossing is
    /// noticed, keyed by the correction it follows, and is not noticed again once announced. A
    /// correction that leaves the spend above a level does not.
    #[test]
    fn a_correction_under_a_level_arms_it_again() {
        let config = config("{ monthly_usd = 0.002, alert_at = 0.5 }", "");
        let budgets = Budgets::new(&config, clock_at(JAN_END).0, None);
        let mut crossings = budgets.take_crossings().unwrap();
        let scope = BudgetScope::Route("r".into());
        let month = Month::of(JAN_END);
        let spend = |amount: u64| {
            let Verdict::Held(held) = admit(&budgets, &config, "r", false) else {
                panic!("fits")
            };
            for reservation in held {
                reservation.settle(amount);
            }
        };
        spend(1_200_000_000);
        assert_eq!(crossings.try_recv().unwrap().armed_after, 0);
        let mut ledger = MonthSpend::default();
        ledger
            .calls
            .routes
            .insert("r".into(), Picodollars(1_200_000_000));
        let announced = vec![(scope.clone(), AlertLevel::AlertAt, 0)];
        // Adjusted by +$0.0001: still past alert_at, not armed again.
        ledger
            .adjustments
            .routes
            .insert("r".into(), Picodollars(100_000_000));
        ledger
            .corrections
            .push((scope.clone(), Picodollars(1_300_000_000)));
        budgets.take_up(month, &ledger, &announced);
        assert!(crossings.try_recv().is_err());
        // Reset: under it again; crossing it once more is noticed, after the second correction.
        ledger
            .adjustments
            .routes
            .insert("r".into(), Picodollars(-1_200_000_000));
        ledger.corrections.push((scope.clone(), Picodollars(0)));
        budgets.take_up(month, &ledger, &announced);
        assert!(crossings.try_recv().is_err(), "nothing crossed yet");
        spend(1_100_000_000);
        let again = crossings.try_recv().unwrap();
        assert_eq!((again.level, again.armed_after), (AlertLevel::AlertAt, 2));
        // Announced (here or by another replica): the ledger says so, and it is not again.
        let mut announced = announced;
        announced.push((scope.clone(), AlertLevel::AlertAt, 2));
        ledger
            .calls
            .routes
            .insert("r".into(), Picodollars(2_300_000_000));
        let fresh = Budgets::new(&config, clock_at(JAN_END).0, None);
        let mut fresh_crossings = fresh.take_crossings().unwrap();
        fresh.take_up(month, &ledger, &announced);
        assert!(
            fresh_crossings.try_recv().is_err(),
            "a restarted gateway does not announce it again"
        );
    }
}
