//! A per-minute count kept by the sliding-window-counter algorithm (the one Cloudflare describes
//! for its rate limiting): the count of the current wall-clock minute, plus the previous minute's
//! count weighted by how much of it the trailing 60 seconds still cover. Two numbers per limit, no
//! list of events, and the same arithmetic in this process's memory ([`Window`]) and in Redis
//! ([`super::shared`]), where every replica's minute is the same wall-clock minute.
//!
//! Its error: it assumes the previous minute's traffic was spread evenly over it. With traffic
//! spread evenly it is exact; in the worst case — the whole previous minute's traffic in its last
//! instant — the trailing 60 seconds may hold up to twice the limit for a moment. It never lets
//! one minute (a fixed window) take more than the limit.
//!
//! In memory each minute's count is one `AtomicU64` holding the minute (24 bits) and the count
//! (40 bits), changed by compare-and-swap: serving threads share it without a lock, and a slot
//! that still holds a minute two or more ago reads as empty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::reservation::Meter;

pub const MINUTE_MS: u64 = 60_000;
const COUNT_BITS: u32 = 40;
const MAX_COUNT: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// A moment as the windows read it: which wall-clock minute, and how far into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub minute: i64,
    pub into_ms: u64,
}

impl Now {
    pub fn read() -> Now {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now::at(ms)
    }

    pub fn at(ms: u64) -> Now {
        Now {
            minute: (ms / MINUTE_MS) as i64,
            into_ms: ms % MINUTE_MS,
        }
    }
}

/// Where a limit stands for the client: `x-ratelimit-limit-*`, `-remaining-*`, `-reset-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window is empty again, if nothing more comes.
    pub reset: Duration,
}

/// The counts a limit is judged by: the previous minute's and the current one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub previous: u64,
    pub current: u64,
}

impl Counts {
    /// The trailing minute's estimate, in 1/60,000ths (exact integer arithmetic).
    fn scaled(self, now: Now) -> u128 {
        u128::from(self.previous) * u128::from(MINUTE_MS - now.into_ms)
            + u128::from(self.current) * u128::from(MINUTE_MS)
    }

    /// Whether `cost` more fits under `limit` now.
    pub fn fits(self, now: Now, cost: u64, limit: u64) -> bool {
        self.scaled(now) + u128::from(cost) * u128::from(MINUTE_MS)
            <= u128::from(limit) * u128::from(MINUTE_MS)
    }

    /// Where the limit stands: what is left of it now, and how long until it resets — where
    /// nothing is left, until one more fits (what `retry-after` says of a refused request or count, so
    /// that the two never disagree: a client waiting out either is let through); else until the
    /// window is empty again.
    pub fn standing(self, now: Now, limit: u64) -> Standing {
        let used = self.scaled(now).div_ceil(u128::from(MINUTE_MS));
        let remaining = u128::from(limit).saturating_sub(used) as u64;
        let reset_ms = if remaining == 0 {
            self.retry_after(now, 1, limit).as_millis() as u64
        } else if self.current > 0 {
            (MINUTE_MS - now.into_ms) + MINUTE_MS
        } else if self.previous > 0 {
            MINUTE_MS - now.into_ms
        } else {
            0
        };
        Standing {
            limit,
            remaining,
            reset: Duration::from_millis(reset_ms),
        }
    }

    /// How long until `cost` fits under `limit`, if nothing more comes. `cost` is never more than
    /// `limit` (admission caps it), so it always fits once both minutes have passed.
    pub fn retry_after(self, now: Now, cost: u64, limit: u64) -> Duration {
        let room = |count: u64| limit.checked_sub(count.saturating_add(cost));
        // Within this minute the previous minute's share shrinks by `previous` per minute.
        if let Some(room) = room(self.current) {
            if self.previous == 0 {
                return Duration::ZERO;
            }
            let at = MINUTE_MS.saturating_sub(
                (u128::from(room) * u128::from(MINUTE_MS) / u128::from(self.previous)) as u64,
            );
            return Duration::from_millis(at.saturating_sub(now.into_ms));
        }
        // Next minute: this minute's count becomes the previous one and shrinks in turn.
        let left = MINUTE_MS - now.into_ms;
        let room = limit.saturating_sub(cost);
        let at = if self.current == 0 {
            0
        } else {
            MINUTE_MS.saturating_sub(
                (u128::from(room) * u128::from(MINUTE_MS) / u128::from(self.current)) as u64,
            )
        };
        Duration::from_millis(left + at)
    }
}

/// One limit's two minutes in memory, shared by every serving thread.
#[derive(Debug)]
pub struct Window {
    limit: u64,
    slots: [AtomicU64; 2],
}

fn tag(minute: i64) -> u64 {
    (minute as u64) & TAG_MASK
}

fn pack(minute: i64, count: u64) -> u64 {
    (tag(minute) << COUNT_BITS) | count.min(MAX_COUNT)
}

fn slot(minute: i64) -> usize {
    minute.rem_euclid(2) as usize
}

impl Window {
    pub fn new(limit: u64) -> Window {
        Window {
            limit: limit.min(MAX_COUNT),
            slots: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// `minute`'s count, or 0 when its slot holds another minute.
    fn count(&self, minute: i64) -> u64 {
        let raw = self.slots[slot(minute)].load(Ordering::Acquire);
        if raw >> COUNT_BITS == tag(minute) {
            raw & MAX_COUNT
        } else {
            0
        }
    }

    pub fn counts(&self, now: Now) -> Counts {
        Counts {
            previous: self.count(now.minute - 1),
            current: self.count(now.minute),
        }
    }

    /// Changes `minute`'s count by `change` (never below 0), if its slot still holds it or
    /// (`start`) may begin it; returns the counts it saw and whether it changed them.
    fn update(&self, minute: i64, start: bool, change: impl Fn(u64) -> Option<u64>) -> bool {
        let slot = &self.slots[slot(minute)];
        let mut raw = slot.load(Ordering::Acquire);
        loop {
            let count = if raw >> COUNT_BITS == tag(minute) {
                raw & MAX_COUNT
            } else if start {
                0
            } else {
                return false;
            };
            let Some(new) = change(count) else {
                return false;
            };
            match slot.compare_exchange_weak(
                raw,
                pack(minute, new),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => raw = seen,
            }
        }
    }

    /// Takes `cost` if it fits; the counts after taking it, or the counts that refused it.
    pub fn take(&self, now: Now, cost: u64) -> Result<Counts, Counts> {
        let previous = self.count(now.minute - 1);
        let seen = std::cell::Cell::new(0);
        let taken = self.update(now.minute, true, |current| {
            seen.set(current);
            let counts = Counts { previous, current };
            counts
                .fits(now, cost, self.limit)
                .then(|| current.saturating_add(cost))
        });
        let current = seen.get();
        if taken {
            Ok(Counts {
                previous,
                current: current.saturating_add(cost).min(MAX_COUNT),
            })
        } else {
            Err(Counts { previous, current })
        }
    }

    /// Adds `amount` whether it fits or not: what another judge (the shared store) admitted.
    pub fn add(&self, now: Now, amount: u64) {
        self.update(now.minute, true, |current| {
            Some(current.saturating_add(amount))
        });
    }

    /// Gives back what `take` took in `minute` for a request refused by another limit.
    pub fn give_back(&self, minute: i64, amount: u64) {
        self.update(minute, false, |current| {
            Some(current.saturating_sub(amount))
        });
    }
}

/// A token reservation settled: `minute`'s count corrected from what was held to what was used,
/// never below 0. A minute that has left both slots is past correcting.
impl Meter for Window {
    fn settle(&self, minute: i64, held: u64, used: u64) {
        if held == used {
            return;
        }
        self.update(minute, false, |current| {
            Some(current.saturating_sub(held).saturating_add(used))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_796_000_000_000 - 1_796_000_000_000 % MINUTE_MS;

    #[test]
    fn a_minute_takes_up_to_its_limit_and_the_next_weighs_it_by_what_is_left() {
        let window = Window::new(10);
        let now = Now::at(T0 + 1_000);
        for _ in 0..10 {
            window.take(now, 1).unwrap();
        }
        let refused = window.take(now, 1).unwrap_err();
        assert_eq!(refused.current, 10);
        assert_eq!(
            refused.retry_after(now, 1, 10),
            Duration::from_millis(59_000 + 6_000)
        );
        // A quarter into the next minute, three quarters of the last one still count: 7.5.
        let later = Now::at(T0 + MINUTE_MS + 15_000);
        assert_eq!(
            window.counts(later),
            Counts {
                previous: 10,
                current: 0
            }
        );
        window.take(later, 1).unwrap();
        window.take(later, 1).unwrap();
        let refused = window.take(later, 1).unwrap_err();
        assert_eq!(refused.standing(later, 10).remaining, 0);
        // 7.5 + 2 + 1 fits once the old minute's share is 7: at 18 s.
        assert_eq!(
            refused.retry_after(later, 1, 10),
            Duration::from_millis(3_000)
        );
        // Two minutes on, the slot is another minute's: empty.
        let gone = Now::at(T0 + 2 * MINUTE_MS + 1);
        assert_eq!(window.counts(gone).current, 0);
        assert_eq!(window.counts(gone).previous, 2);
    }

    #[test]
    fn settling_corrects_the_minute_and_never_goes_below_zero() {
        let window = Window::new(1_000);
        let now = Now::at(T0 + 5);
        window.take(now, 300).unwrap();
        window.settle(now.minute, 300, 120);
        assert_eq!(window.counts(now).current, 120);
        // More given back than the minute holds (the count was reset meanwhile): 0, not a wrap.
        window.settle(now.minute, 500, 0);
        assert_eq!(window.counts(now).current, 0);
        // A request that used more than it reserved counts what it used.
        window.settle(now.minute, 10, 40);
        assert_eq!(window.counts(now).current, 40);
        // A minute gone from its slot is not touched.
        window.settle(now.minute - 2, 0, 999);
        assert_eq!(window.counts(now).current, 40);
    }

    #[test]
    fn standing_says_what_is_left_and_when_the_window_is_empty() {
        let counts = Counts {
            previous: 4,
            current: 3,
        };
        let now = Now::at(T0 + 30_000);
        // 4 × 0.5 + 3 = 5 of 10.
        assert_eq!(
            counts.standing(now, 10),
            Standing {
                limit: 10,
                remaining: 5,
                reset: Duration::from_millis(90_000)
            }
        );
        let only_old = Counts {
            previous: 4,
            current: 0,
        };
        assert_eq!(
            only_old.standing(now, 10).reset,
            Duration::from_millis(30_000)
        );
        // Nothing left: it resets when one more fits, as retry-after says, not when the window
        // is empty (a minute and a half away).
        let full = Counts {
            previous: 0,
            current: 3,
        };
        let standing = full.standing(now, 3);
        assert_eq!(standing.remaining, 0);
        assert_eq!(standing.reset, full.retry_after(now, 1, 3));
        assert_eq!(standing.reset, Duration::from_millis(50_000));
    }

    #[test]
    fn threads_sharing_a_window_never_take_more_than_its_limit() {
        let window = std::sync::Arc::new(Window::new(1_000));
        let now = Now::at(T0 + 10);
        let taken: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let window = window.clone();
                    scope.spawn(move || (0..500).filter(|_| window.take(now, 1).is_ok()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 1_000);
        assert_eq!(window.counts(now).current, 1_000);
    }
}
