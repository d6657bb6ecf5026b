//! Holding part of a limit for work whose real size is known only when it ends: a request's
//! tokens against a per-minute limit, a shadow call's dollars against its day's budget. The
//! [`Meter`] owns the count; a [`Reservation`] is what one piece of work holds of it, given back
//! and replaced by what the work really used when it is settled — or, if it is dropped unsettled
//! (a request cut off at shutdown, a task aborted), counted in full: work that may have been
//! charged for is never counted as free.

use std::sync::Arc;

/// What a reservation is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Prompt and completion tokens.
    Tokens,
    /// Picodollars, as the ledger prices calls.
    Picodollars,
}

/// A count that work reserves from and settles into.
pub trait Meter: Send + Sync {
    /// Gives back `held`, reserved in `period` (a window, a day, a month: the meter's own
    /// numbering), and counts `used` in its place. Called exactly once per reservation, from any
    /// thread, on the request path: it must not block.
    fn settle(&self, period: i64, held: u64, used: u64);
}

/// What one piece of work holds of a [`Meter`] until it is settled.
#[must_use = "a reservation holds part of a limit until it is settled"]
pub struct Reservation {
    meter: Arc<dyn Meter>,
    unit: Unit,
    period: i64,
    amount: u64,
    settled: bool,
}

impl Reservation {
    /// A reservation of `amount` that `meter` has already counted as held in `period`.
    pub fn new(meter: Arc<dyn Meter>, unit: Unit, period: i64, amount: u64) -> Reservation {
        Reservation {
            meter,
            unit,
            period,
            amount,
            settled: false,
        }
    }

    pub fn unit(&self) -> Unit {
        self.unit
    }

    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Gives the reservation back and counts what the work really used.
    pub fn settle(mut self, used: u64) {
        self.settled = true;
        self.meter.settle(self.period, self.amount, used);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.meter.settle(self.period, self.amount, self.amount);
        }
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("unit", &self.unit)
            .field("period", &self.period)
            .field("amount", &self.amount)
            .finish_non_exhaustive()
    }
}

/// What a finished request really used, in every [`Unit`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Used {
    pub tokens: u64,
    pub picodollars: u64,
}

impl Used {
    fn of(&self, unit: Unit) -> u64 {
        match unit {
            Unit::Tokens => self.tokens,
            Unit::Picodollars => self.picodollars,
        }
    }
}

/// Everything one request holds between its admission and its end; it travels with the request's
/// [`crate::outcome::Exchange`]. Empty — no allocation — where no limit applies.
#[derive(Debug, Default)]
#[must_use = "a hold keeps its reservations until it is settled"]
pub struct Hold(Vec<Reservation>);

impl Hold {
    pub fn add(&mut self, reservation: Reservation) {
        self.0.push(reservation);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn reservations(&self) -> &[Reservation] {
        &self.0
    }

    /// Settles every reservation with what the request used in its unit.
    pub fn settle(self, used: Used) {
        for reservation in self.0 {
            let unit = reservation.unit;
            reservation.settle(used.of(unit));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(i64, u64, u64)>>);

    impl Meter for Recorded {
        fn settle(&self, period: i64, held: u64, used: u64) {
            self.0.lock().unwrap().push((period, held, used));
        }
    }

    #[test]
    fn a_settled_reservation_counts_what_was_used_once() {
        let meter = Arc::new(Recorded::default());
        let mut hold = Hold::default();
        hold.add(Reservation::new(meter.clone(), Unit::Tokens, 7, 100));
        hold.add(Reservation::new(meter.clone(), Unit::Picodollars, 3, 900));
        hold.settle(Used {
            tokens: 40,
            picodollars: 500,
        });
        assert_eq!(*meter.0.lock().unwrap(), [(7, 100, 40), (3, 900, 500)]);
    }

    #[test]
    fn a_reservation_dropped_unsettled_counts_in_full() {
        let meter = Arc::new(Recorded::default());
        drop(Reservation::new(meter.clone(), Unit::Tokens, 1, 250));
        assert_eq!(*meter.0.lock().unwrap(), [(1, 250, 250)]);
    }
}
