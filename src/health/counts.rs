//! A provider's own token counts (Anthropic's `count_tokens`) as the gateway asks for them: how
//! many may be out at once, and how often their failures are worth a warning. A count takes no
//! `max_in_flight` slot of the provider's servers (it is not the tier's traffic), so it has this
//! cap of its own: without it, any client could open as many calls with the operator's key as it
//! likes, and use up the organisation's limit for counting. Past the cap a count is answered with
//! the gateway's estimate at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// The most of a provider's counts out at once: a client counts before it sends, one prompt at a
/// time, so a few cover honest traffic.
pub const MAX_COUNTS_IN_FLIGHT: usize = 4;
/// The least time between two warnings that a provider could not count: a failing or abused
/// provider would otherwise write a line a request.
pub const COUNT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

pub struct CountGate {
    in_flight: Semaphore,
    /// When the last warning was written, in milliseconds after `epoch`, plus one (0: never).
    warned: AtomicU64,
    epoch: Instant,
}

impl Default for CountGate {
    fn default() -> CountGate {
        CountGate {
            in_flight: Semaphore::new(MAX_COUNTS_IN_FLIGHT),
            warned: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl CountGate {
    /// A place among the counts out, held until the permit drops; `None` when all are taken.
    pub fn try_enter(&self) -> Option<SemaphorePermit<'_>> {
        self.in_flight.try_acquire().ok()
    }

    /// Whether a failure to count is to be warned of now: the first, then at most one each
    /// [`COUNT_WARNING_INTERVAL`]; the others go to the debug log.
    pub fn should_warn(&self) -> bool {
        self.should_warn_at(self.epoch.elapsed())
    }

    fn should_warn_at(&self, now: Duration) -> bool {
        let now = now.as_millis() as u64 + 1;
        let last = self.warned.load(Ordering::Relaxed);
        let due =
            last == 0 || now.saturating_sub(last) >= COUNT_WARNING_INTERVAL.as_millis() as u64;
        due && self
            .warned
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_a_provider_an_interval() {
        let gate = CountGate::default();
        assert!(gate.should_warn_at(Duration::from_secs(5)));
        assert!(!gate.should_warn_at(Duration::from_secs(6)));
        assert!(!gate.should_warn_at(Duration::from_secs(64)));
        assert!(gate.should_warn_at(Duration::from_secs(65)));
        assert!(!gate.should_warn_at(Duration::from_secs(66)));
    }

    #[test]
    fn counts_out_are_capped() {
        let gate = CountGate::default();
        let held: Vec<_> = (0..MAX_COUNTS_IN_FLIGHT)
            .map(|_| gate.try_enter().expect("a place under the cap"))
            .collect();
        assert!(gate.try_enter().is_none());
        drop(held);
        assert!(gate.try_enter().is_some());
    }
}
