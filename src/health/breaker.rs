//! A circuit breaker per provider. Closed: calls pass, failures are counted. Open: the provider is
//! skipped at once, so a dead local server costs requests nothing. After a cool-down (doubling on
//! each failed trial, capped) one trial call is let through (half-open); its success closes the
//! breaker, its failure opens it again. The active probe can open it, and close one it opened;
//! a breaker that calls opened its probe only moves to half-open, so a real call decides: a server
//! that answers `/models` while its completions hang must not be let back in by its probe alone.
//!
//! Each state is numbered (its epoch), and a call keeps the epoch it was admitted in: its outcome
//! is heard only while that state lasts. So a call that started before the breaker opened, or a
//! last-resort call through an open breaker, cannot close it; only the trial or the probe can.
//!
//! The closed state — nearly every request — is read and updated with atomics only; the mutex is
//! taken on failures and transitions, never across an await.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::BreakerPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
/// The state is the low two bits of the breaker's word, its epoch the rest: one load reads both.
const STATE_BITS: u32 = 2;

impl BreakerState {
    /// As the admin API, the metrics and the log name it.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_bits(value: u64) -> BreakerState {
        match value & ((1 << STATE_BITS) - 1) {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    fn bits(self) -> u64 {
        match self {
            BreakerState::Closed => CLOSED,
            BreakerState::Open => OPEN,
            BreakerState::HalfOpen => HALF_OPEN,
        }
    }
}

/// What a call was let through as: the state's epoch it was admitted in, and whether it is the
/// half-open breaker's one trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    trial: bool,
}

impl Ticket {
    pub fn is_trial(self) -> bool {
        self.trial
    }
}

/// Whether a call may go to the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call it; report the outcome with this ticket.
    Call(Ticket),
    /// Open: skip this provider; it may be tried again after `retry_in` (zero: the cool-down is
    /// over but no trial may go now).
    Skip { retry_in: Duration },
}

/// A change of state, for the log line and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: String,
}

pub struct Breaker {
    policy: BreakerPolicy,
    /// `epoch << STATE_BITS | state`; written only under `inner`'s lock.
    word: AtomicU64,
    consecutive: AtomicU32,
    window_calls: AtomicU32,
    inner: Mutex<Inner>,
}

struct Inner {
    window_start: Instant,
    window_failures: u32,
    open_until: Instant,
    cooldown: Duration,
    trial_out: bool,
    /// Calls' failures opened it (not the probe) since it was last closed: the probe's answer
    /// says nothing of them, so only a trial call closes it.
    by_calls: bool,
    since: SystemTime,
    last_error: Option<String>,
}

/// What the admin API shows of a breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub since_unix_ms: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub retry_in_ms: Option<u64>,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        let now = Instant::now();
        Breaker {
            policy,
            word: AtomicU64::new(CLOSED),
            consecutive: AtomicU32::new(0),
            window_calls: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                window_start: now,
                window_failures: 0,
                open_until: now,
                cooldown: policy.cooldown,
                trial_out: false,
                by_calls: false,
                since: SystemTime::now(),
                last_error: None,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.current().0
    }

    /// The state and its epoch, read together.
    fn current(&self) -> (BreakerState, u64) {
        let word = self.word.load(Ordering::Acquire);
        (BreakerState::from_bits(word), word >> STATE_BITS)
    }

    /// May a call go now? `trials`: whether a call may be the half-open trial once the cool-down
    /// is over (not for a provider its probe brings back after warming it up). The transition is
    /// open → half-open, when this call is its trial.
    pub fn admit(&self, trials: bool) -> (Admission, Option<Transition>) {
        let (state, epoch) = self.current();
        if state == BreakerState::Closed {
            return (
                Admission::Call(Ticket {
                    epoch,
                    trial: false,
                }),
                None,
            );
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let (state, epoch) = self.current();
        let cooled = now >= inner.open_until;
        match state {
            BreakerState::Closed => (
                Admission::Call(Ticket {
                    epoch,
                    trial: false,
                }),
                None,
            ),
            BreakerState::Open if cooled && trials => {
                inner.trial_out = true;
                let epoch = self.set(&mut inner, BreakerState::HalfOpen);
                let transition = Transition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen,
                    reason: "cool-down over: one trial call goes through".into(),
                };
                (
                    Admission::Call(Ticket { epoch, trial: true }),
                    Some(transition),
                )
            }
            // Half-open by the cool-down (a trial went) or by a probe that warmed the server up:
            // either way a user's call may be the trial now.
            BreakerState::HalfOpen if !inner.trial_out => {
                inner.trial_out = true;
                (Admission::Call(Ticket { epoch, trial: true }), None)
            }
            BreakerState::Open | BreakerState::HalfOpen => (
                Admission::Skip {
                    retry_in: inner.open_until.saturating_duration_since(now),
                },
                None,
            ),
        }
    }

    /// Whether [`Breaker::admit`] would let a call through now, without letting one: what the
    /// pool asks of each server before it draws. A closed breaker is read from its atomic alone.
    pub fn would_admit(&self, trials: bool) -> bool {
        if self.state() == BreakerState::Closed {
            return true;
        }
        let inner = self.lock();
        match self.current().0 {
            BreakerState::Closed => true,
            BreakerState::Open => trials && Instant::now() >= inner.open_until,
            BreakerState::HalfOpen => !inner.trial_out,
        }
    }

    /// A ticket for a call let through whatever the state (the last resort when every tier is
    /// open): it reports to the state it finds, and an open breaker hears nothing of it.
    pub fn bypass(&self) -> Ticket {
        Ticket {
            epoch: self.current().1,
            trial: false,
        }
    }

    /// A call succeeded. Only the trial closes a breaker; a call admitted in an earlier state
    /// (a stream that began before the opening) says nothing about the provider now.
    pub fn on_success(&self, ticket: Ticket) -> Option<Transition> {
        let (state, epoch) = self.current();
        if epoch != ticket.epoch {
            return None;
        }
        match state {
            BreakerState::Closed => {
                self.window_calls.fetch_add(1, Ordering::Relaxed);
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                None
            }
            BreakerState::HalfOpen if ticket.trial => {
                self.close(Some(ticket), "the trial call succeeded")
            }
            BreakerState::Open | BreakerState::HalfOpen => None,
        }
    }

    /// A call failed in a way that is the provider's fault.
    pub fn on_failure(&self, ticket: Ticket, reason: &str) -> Option<Transition> {
        let mut inner = self.lock();
        let (state, epoch) = self.current();
        if epoch != ticket.epoch {
            return None;
        }
        inner.last_error = Some(reason.to_string());
        match state {
            BreakerState::Closed => {
                let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                self.window_calls.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if now.duration_since(inner.window_start) > self.policy.window {
                    inner.window_start = now;
                    inner.window_failures = 0;
                    self.window_calls.store(1, Ordering::Relaxed);
                }
                inner.window_failures += 1;
                let calls = self.window_calls.load(Ordering::Relaxed).max(1);
                let rate = f64::from(inner.window_failures) / f64::from(calls);
                let why = if consecutive >= self.policy.failures {
                    format!("{consecutive} consecutive failures, last: {reason}")
                } else if calls >= self.policy.min_requests && rate >= self.policy.error_rate {
                    format!(
                        "{:.0}% of {calls} calls failed, last: {reason}",
                        rate * 100.0
                    )
                } else {
                    return None;
                };
                inner.cooldown = self.policy.cooldown;
                inner.by_calls = true;
                Some(self.open(&mut inner, why))
            }
            // A failed trial: the provider is still down, so wait longer before the next one.
            BreakerState::HalfOpen if ticket.trial => {
                inner.cooldown = (inner.cooldown * 2).min(self.policy.max_cooldown);
                Some(self.open(&mut inner, format!("trial failed: {reason}")))
            }
            // A last-resort call through an open breaker: no news.
            BreakerState::Open | BreakerState::HalfOpen => None,
        }
    }

    /// The trial call ended without an outcome (the client went away, or the request was
    /// refused as the client's fault): let another one through.
    pub fn trial_abandoned(&self, ticket: Ticket) {
        if !ticket.trial {
            return;
        }
        let mut inner = self.lock();
        if self.current() == (BreakerState::HalfOpen, ticket.epoch) {
            inner.trial_out = false;
        }
    }

    /// The active probe failed: open at once, so that users do not find out first. A half-open
    /// breaker opens again as after a failed trial; its trial, if one is out, is no longer heard.
    pub fn probe_failed(&self, reason: &str) -> Option<Transition> {
        let mut inner = self.lock();
        inner.last_error = Some(reason.to_string());
        match self.state() {
            BreakerState::Closed => inner.cooldown = self.policy.cooldown,
            BreakerState::HalfOpen => {
                inner.cooldown = (inner.cooldown * 2).min(self.policy.max_cooldown);
            }
            BreakerState::Open => return None,
        }
        Some(self.open(&mut inner, format!("health probe failed: {reason}")))
    }

    /// Whether a successful probe may close the breaker now: only once the cool-down has passed,
    /// so a provider that answers `/models` but fails real calls does not flap open and closed.
    pub fn probe_may_close(&self) -> bool {
        self.state() == BreakerState::Closed || Instant::now() >= self.lock().open_until
    }

    /// The provider answered its probe (and its warm-up): close, or where calls' failures opened
    /// the breaker, move to half-open so that the next call is the trial that decides.
    pub fn probe_recovered(&self) -> Option<Transition> {
        let mut inner = self.lock();
        if !inner.by_calls {
            drop(inner);
            return self.close(None, "health probe succeeded");
        }
        if self.state() != BreakerState::Open {
            // Half-open already: its trial decides.
            return None;
        }
        inner.trial_out = false;
        self.set(&mut inner, BreakerState::HalfOpen);
        Some(Transition {
            from: BreakerState::Open,
            to: BreakerState::HalfOpen,
            reason: "health probe succeeded, but calls failed: one trial call decides".into(),
        })
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let inner = self.lock();
        let state = self.state();
        BreakerSnapshot {
            state,
            since_unix_ms: inner
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            last_error: inner.last_error.clone(),
            retry_in_ms: (state != BreakerState::Closed).then(|| {
                inner
                    .open_until
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64
            }),
        }
    }

    /// Closes the breaker; with `ticket`, only if the state it was admitted in still lasts.
    fn close(&self, ticket: Option<Ticket>, reason: &str) -> Option<Transition> {
        let mut inner = self.lock();
        let (from, epoch) = self.current();
        if from == BreakerState::Closed || ticket.is_some_and(|t| t.epoch != epoch) {
            return None;
        }
        inner.trial_out = false;
        inner.by_calls = false;
        inner.cooldown = self.policy.cooldown;
        inner.window_start = Instant::now();
        inner.window_failures = 0;
        self.window_calls.store(0, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.set(&mut inner, BreakerState::Closed);
        Some(Transition {
            from,
            to: BreakerState::Closed,
            reason: reason.to_string(),
        })
    }

    fn open(&self, inner: &mut Inner, reason: String) -> Transition {
        let from = self.state();
        inner.open_until = Instant::now() + inner.cooldown;
        inner.trial_out = false;
        self.set(inner, BreakerState::Open);
        Transition {
            from,
            to: BreakerState::Open,
            reason,
        }
    }

    /// Moves to `state` in a new epoch, which it returns. Only under `inner`'s lock, so no other
    /// writer races the read-then-store.
    fn set(&self, inner: &mut Inner, state: BreakerState) -> u64 {
        inner.since = SystemTime::now();
        let epoch = self.current().1 + 1;
        self.word
            .store(epoch << STATE_BITS | state.bits(), Ordering::Release);
        epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves counters, not invariants, behind: keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failures: 3,
            error_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(60),
            cooldown: Duration::ZERO,
            max_cooldown: Duration::from_secs(60),
        }
    }

    /// A call admitted now (trials allowed), which must be let through.
    fn call(breaker: &Breaker) -> Ticket {
        match breaker.admit(true).0 {
            Admission::Call(ticket) => ticket,
            skip => panic!("not admitted: {skip:?}"),
        }
    }

    fn fail(breaker: &Breaker, reason: &str) -> Option<Transition> {
        breaker.on_failure(call(breaker), reason)
    }

    fn succeed(breaker: &Breaker) -> Option<Transition> {
        breaker.on_success(call(breaker))
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let breaker = Breaker::new(policy());
        fail(&breaker, "x");
        fail(&breaker, "x");
        succeed(&breaker);
        fail(&breaker, "x");
        fail(&breaker, "x");
        assert_eq!(breaker.state(), BreakerState::Closed);
        let transition = fail(&breaker, "http_503").expect("opens");
        assert_eq!(transition.to, BreakerState::Open);
        assert!(
            transition
                .reason
                .contains("3 consecutive failures, last: http_503")
        );
    }

    #[test]
    fn opens_on_error_rate_over_the_window() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 100,
            ..policy()
        });
        for _ in 0..5 {
            assert_eq!(breaker.state(), BreakerState::Closed);
            succeed(&breaker);
            fail(&breaker, "x");
        }
        assert_eq!(breaker.state(), BreakerState::Open, "5 of 10 failed");

        let breaker = Breaker::new(BreakerPolicy {
            failures: 100,
            ..policy()
        });
        for _ in 0..9 {
            succeed(&breaker);
        }
        for _ in 0..3 {
            fail(&breaker, "x");
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "3 of 12 is under 50%"
        );
    }

    #[test]
    fn failures_from_an_expired_window_do_not_count() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 100,
            window: Duration::from_millis(20),
            ..policy()
        });
        for _ in 0..4 {
            fail(&breaker, "x");
            succeed(&breaker);
        }
        succeed(&breaker);
        // Letting the window run out is the point here, not a synchronization.
        std::thread::sleep(Duration::from_millis(30));
        fail(&breaker, "x");
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "1 call in the new window; 5 of 10 only if the old ones still counted"
        );
    }

    #[test]
    fn a_probe_may_close_only_once_the_cool_down_has_passed() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            cooldown: Duration::from_secs(3600),
            ..policy()
        });
        assert!(breaker.probe_may_close(), "closed already");
        assert_eq!(breaker.snapshot().retry_in_ms, None);
        fail(&breaker, "x");
        assert!(!breaker.probe_may_close(), "an hour of cool-down left");
        assert!(breaker.snapshot().retry_in_ms.unwrap() > 3_000_000);
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            ..policy()
        });
        fail(&breaker, "x");
        assert!(breaker.probe_may_close(), "no cool-down");
    }

    #[test]
    fn half_open_lets_one_trial_through_and_its_outcome_decides() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            ..policy()
        });
        fail(&breaker, "x");
        let (admission, transition) = breaker.admit(true);
        let Admission::Call(trial) = admission else {
            panic!("zero cool-down: trial at once");
        };
        assert!(trial.is_trial());
        assert_eq!(
            transition.map(|t| (t.from, t.to)),
            Some((BreakerState::Open, BreakerState::HalfOpen)),
            "open → half-open is a transition like any other"
        );
        assert!(
            matches!(breaker.admit(true).0, Admission::Skip { .. }),
            "only one trial at a time"
        );
        breaker.on_failure(trial, "still down");
        assert_eq!(breaker.state(), BreakerState::Open);
        let trial = call(&breaker);
        breaker.trial_abandoned(trial);
        let trial = call(&breaker);
        assert!(trial.is_trial(), "an abandoned trial frees the slot");
        assert_eq!(
            breaker.on_success(trial).map(|t| t.to),
            Some(BreakerState::Closed)
        );
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(!call(&breaker).is_trial());
    }

    #[test]
    fn only_the_trial_or_the_probe_closes_an_open_breaker() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            cooldown: Duration::from_secs(3600),
            ..policy()
        });
        let before = call(&breaker);
        let last_resort_before = breaker.bypass();
        fail(&breaker, "x");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.on_success(before),
            None,
            "a call admitted before the opening"
        );
        assert_eq!(breaker.on_success(last_resort_before), None);
        assert_eq!(breaker.on_success(breaker.bypass()), None, "a last resort");
        assert_eq!(breaker.state(), BreakerState::Open);

        // Half-open: a last resort while the trial is out is not the trial.
        breaker.lock().open_until = Instant::now();
        let trial = call(&breaker);
        assert_eq!(breaker.on_success(breaker.bypass()), None);
        assert_eq!(breaker.on_failure(breaker.bypass(), "x"), None);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        // A trial from an earlier half-open state is not this one's.
        breaker.probe_failed("down");
        breaker.lock().open_until = Instant::now();
        let second = call(&breaker);
        assert_eq!(breaker.on_success(trial), None);
        breaker.trial_abandoned(trial);
        assert!(
            matches!(breaker.admit(true).0, Admission::Skip { .. }),
            "an old trial does not free the slot of the one out now"
        );
        assert_eq!(
            breaker.on_success(second).map(|t| t.to),
            Some(BreakerState::Closed)
        );
    }

    #[test]
    fn without_trials_a_cooled_breaker_stays_open_for_its_probe() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            ..policy()
        });
        fail(&breaker, "x");
        assert_eq!(
            breaker.admit(false),
            (
                Admission::Skip {
                    retry_in: Duration::ZERO
                },
                None
            )
        );
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn the_cool_down_grows_on_failed_trials_and_is_capped() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            cooldown: Duration::from_millis(10),
            max_cooldown: Duration::from_millis(25),
            ..policy()
        });
        fail(&breaker, "x");
        assert!(
            matches!(breaker.admit(true).0, Admission::Skip { retry_in } if retry_in <= Duration::from_millis(10))
        );
        breaker.lock().open_until = Instant::now();
        fail(&breaker, "x");
        assert_eq!(breaker.lock().cooldown, Duration::from_millis(20));
        breaker.lock().open_until = Instant::now();
        fail(&breaker, "x");
        assert_eq!(breaker.lock().cooldown, Duration::from_millis(25), "capped");
    }

    #[test]
    fn probes_open_and_close() {
        let breaker = Breaker::new(policy());
        assert_eq!(
            breaker.probe_failed("connect_refused").map(|t| t.to),
            Some(BreakerState::Open)
        );
        assert_eq!(
            breaker.snapshot().last_error.as_deref(),
            Some("connect_refused")
        );
        assert_eq!(
            breaker.probe_recovered().map(|t| t.to),
            Some(BreakerState::Closed)
        );
        assert_eq!(breaker.probe_recovered(), None);
    }

    #[test]
    fn a_probe_moves_a_breaker_calls_opened_to_half_open_and_only_a_trial_closes_it() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            ..policy()
        });
        fail(&breaker, "timeout_total");
        let transition = breaker.probe_recovered().expect("half-opens");
        assert_eq!(
            (transition.from, transition.to),
            (BreakerState::Open, BreakerState::HalfOpen)
        );
        assert_eq!(breaker.probe_recovered(), None, "a second probe: no change");
        // No trials for a warmed-up provider's cool-down, but the probe's half-open takes one.
        let Admission::Call(trial) = breaker.admit(false).0 else {
            panic!("half-open by the probe: a trial may go");
        };
        assert!(trial.is_trial());
        breaker.on_failure(trial, "timeout_total");
        assert_eq!(breaker.state(), BreakerState::Open, "the failed trial");
        breaker.probe_failed("down");
        breaker.lock().open_until = Instant::now();
        assert_eq!(
            breaker.probe_recovered().map(|t| t.to),
            Some(BreakerState::HalfOpen),
            "a probe's failure in between does not make the calls' failures forgotten"
        );
        let trial = call(&breaker);
        assert_eq!(
            breaker.on_success(trial).map(|t| t.to),
            Some(BreakerState::Closed)
        );
        breaker.probe_failed("down");
        assert_eq!(
            breaker.probe_recovered().map(|t| t.to),
            Some(BreakerState::Closed),
            "once closed, what the probe opens the probe closes"
        );
    }

    #[test]
    fn a_failing_probe_opens_a_half_open_breaker_again() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            cooldown: Duration::from_millis(10),
            ..policy()
        });
        fail(&breaker, "x");
        breaker.lock().open_until = Instant::now();
        let trial = call(&breaker);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let transition = breaker.probe_failed("connect_refused").expect("opens");
        assert_eq!(
            (transition.from, transition.to),
            (BreakerState::HalfOpen, BreakerState::Open)
        );
        assert_eq!(breaker.lock().cooldown, Duration::from_millis(20));
        assert_eq!(breaker.on_success(trial), None, "the trial is not heard");
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
