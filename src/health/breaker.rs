//! A circuit breaker per provider. Closed: calls pass, failures are counted. Open: the provider is
//! skipped at once, so a dead local server costs requests nothing. After a cool-down (doubling on
//! each failed trial, capped) one trial call is let through (half-open); its success closes the
//! breaker, its failure opens it again. The active probe can close or open it as well.
//!
//! The closed state — nearly every request — is read and updated with atomics only; the mutex is
//! taken on failures and transitions, never across an await.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
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

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

impl BreakerState {
    /// As the admin API and the metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_u8(value: u8) -> BreakerState {
        match value {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            BreakerState::Closed => CLOSED,
            BreakerState::Open => OPEN,
            BreakerState::HalfOpen => HALF_OPEN,
        }
    }
}

/// Whether a call may go to the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Pass,
    /// The one call allowed through a half-open breaker; its outcome decides the state.
    Trial,
    /// Open: skip this provider; it may be tried again after `retry_in`.
    Skip {
        retry_in: Duration,
    },
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
    state: AtomicU8,
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
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            window_calls: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                window_start: now,
                window_failures: 0,
                open_until: now,
                cooldown: policy.cooldown,
                trial_out: false,
                since: SystemTime::now(),
                last_error: None,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn admit(&self) -> Admission {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Admission::Pass;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        match self.state() {
            BreakerState::Closed => Admission::Pass,
            BreakerState::Open if now >= inner.open_until && !inner.trial_out => {
                inner.trial_out = true;
                self.set(&mut inner, BreakerState::HalfOpen);
                Admission::Trial
            }
            BreakerState::HalfOpen if !inner.trial_out => {
                inner.trial_out = true;
                Admission::Trial
            }
            BreakerState::Open | BreakerState::HalfOpen => Admission::Skip {
                retry_in: inner.open_until.saturating_duration_since(now),
            },
        }
    }

    /// A call (or trial) succeeded.
    pub fn on_success(&self) -> Option<Transition> {
        self.window_calls.fetch_add(1, Ordering::Relaxed);
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) == CLOSED {
            return None;
        }
        self.close("a call succeeded")
    }

    /// A call failed in a way that is the provider's fault.
    pub fn on_failure(&self, reason: &str) -> Option<Transition> {
        self.window_calls.fetch_add(1, Ordering::Relaxed);
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let mut inner = self.lock();
        inner.last_error = Some(reason.to_string());
        let now = Instant::now();
        if now.duration_since(inner.window_start) > self.policy.window {
            inner.window_start = now;
            inner.window_failures = 0;
            self.window_calls.store(1, Ordering::Relaxed);
        }
        inner.window_failures += 1;
        match self.state() {
            BreakerState::Closed => {
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
                Some(self.open(&mut inner, why))
            }
            // A call that started before the breaker opened, or a last-resort call: no news.
            BreakerState::Open => None,
            // A failed trial: the provider is still down, so wait longer before the next one.
            BreakerState::HalfOpen => {
                inner.cooldown = (inner.cooldown * 2).min(self.policy.max_cooldown);
                Some(self.open(&mut inner, format!("trial failed: {reason}")))
            }
        }
    }

    /// The trial call ended without an outcome (the client went away): let another one through.
    pub fn trial_abandoned(&self) {
        self.lock().trial_out = false;
    }

    /// The active probe failed: open at once, so that users do not find out first.
    pub fn probe_failed(&self, reason: &str) -> Option<Transition> {
        let mut inner = self.lock();
        inner.last_error = Some(reason.to_string());
        if self.state() != BreakerState::Closed {
            return None;
        }
        inner.cooldown = self.policy.cooldown;
        Some(self.open(&mut inner, format!("health probe failed: {reason}")))
    }

    /// Whether a successful probe may close the breaker now: only once the cool-down has passed,
    /// so a provider that answers `/models` but fails real calls does not flap open and closed.
    pub fn probe_may_close(&self) -> bool {
        self.state() == BreakerState::Closed || Instant::now() >= self.lock().open_until
    }

    /// The provider answered its probe (and its warm-up): close.
    pub fn probe_recovered(&self) -> Option<Transition> {
        self.close("health probe succeeded")
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

    fn close(&self, reason: &str) -> Option<Transition> {
        let mut inner = self.lock();
        let from = self.state();
        if from == BreakerState::Closed {
            return None;
        }
        inner.trial_out = false;
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

    fn set(&self, inner: &mut Inner, state: BreakerState) {
        inner.since = SystemTime::now();
        self.state.store(state.as_u8(), Ordering::Release);
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

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let breaker = Breaker::new(policy());
        breaker.on_failure("x");
        breaker.on_failure("x");
        breaker.on_success();
        breaker.on_failure("x");
        breaker.on_failure("x");
        assert_eq!(breaker.state(), BreakerState::Closed);
        let transition = breaker.on_failure("http_503").expect("opens");
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
            breaker.on_success();
            breaker.on_failure("x");
        }
        assert_eq!(breaker.state(), BreakerState::Open, "5 of 10 failed");

        let breaker = Breaker::new(BreakerPolicy {
            failures: 100,
            ..policy()
        });
        for _ in 0..9 {
            breaker.on_success();
        }
        for _ in 0..3 {
            breaker.on_failure("x");
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
            breaker.on_failure("x");
            breaker.on_success();
        }
        breaker.on_success();
        // Letting the window run out is the point here, not a synchronization.
        std::thread::sleep(Duration::from_millis(30));
        breaker.on_failure("x");
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
        breaker.on_failure("x");
        assert!(!breaker.probe_may_close(), "an hour of cool-down left");
        assert!(breaker.snapshot().retry_in_ms.unwrap() > 3_000_000);
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            ..policy()
        });
        breaker.on_failure("x");
        assert!(breaker.probe_may_close(), "no cool-down");
    }

    #[test]
    fn half_open_lets_one_trial_through_and_its_outcome_decides() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            ..policy()
        });
        breaker.on_failure("x");
        assert_eq!(
            breaker.admit(),
            Admission::Trial,
            "zero cool-down: trial at once"
        );
        assert!(
            matches!(breaker.admit(), Admission::Skip { .. }),
            "only one trial at a time"
        );
        breaker.on_failure("still down");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(), Admission::Trial);
        breaker.trial_abandoned();
        assert_eq!(
            breaker.admit(),
            Admission::Trial,
            "an abandoned trial frees the slot"
        );
        assert_eq!(
            breaker.on_success().map(|t| t.to),
            Some(BreakerState::Closed)
        );
        assert_eq!(breaker.admit(), Admission::Pass);
    }

    #[test]
    fn the_cool_down_grows_on_failed_trials_and_is_capped() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 1,
            cooldown: Duration::from_millis(10),
            max_cooldown: Duration::from_millis(25),
            ..policy()
        });
        breaker.on_failure("x");
        assert!(
            matches!(breaker.admit(), Admission::Skip { retry_in } if retry_in <= Duration::from_millis(10))
        );
        breaker.lock().open_until = Instant::now();
        assert_eq!(breaker.admit(), Admission::Trial);
        breaker.on_failure("x");
        assert_eq!(breaker.lock().cooldown, Duration::from_millis(20));
        breaker.lock().open_until = Instant::now();
        assert_eq!(breaker.admit(), Admission::Trial);
        breaker.on_failure("x");
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
}
