//! The rest of a request, run in the handler while its client waits, and handed to a task of its
//! own only if the client goes away.
//!
//! A client that disconnects makes hyper drop the handler; the upstream call it started is still
//! charged for, so it must run to its end (bounded by the tier's timeouts) and be recorded as
//! abandoned, with its real usage and cost. Spawning every request into a task of its own gave
//! that, at the price of a task, a channel and a hop between tasks on every request (~3% of the
//! gateway's CPU on non-streamed requests, docs/benchmarks.md); clients rarely leave, so the
//! task is made only when one does.
//!
//! Such a task is counted on its serving thread ([`Detached`]), so that shutdown gives it the same
//! grace as a request whose client still waits.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use tokio::sync::Notify;

/// The rests running on their own on one serving thread.
#[derive(Clone, Default)]
pub struct Detached(Arc<Count>);

#[derive(Default)]
struct Count {
    running: AtomicUsize,
    none_left: Notify,
}

thread_local! {
    static ON_THIS_THREAD: Detached = Detached::default();
}

impl Detached {
    /// This thread's rests: each serving thread has its own runtime, which runs them.
    pub fn on_this_thread() -> Detached {
        ON_THIS_THREAD.with(Detached::clone)
    }

    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::Acquire)
    }

    /// Returns once none is running.
    pub async fn finished(&self) {
        loop {
            let none_left = self.0.none_left.notified();
            if self.running() == 0 {
                return;
            }
            none_left.await;
        }
    }

    fn track(&self) -> Tracked {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone())
    }
}

/// One rest running on its own; it stops counting when its task ends or is dropped.
struct Tracked(Detached);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.0.none_left.notify_waiters();
        }
    }
}

/// Whether the client still waits for the response. The rest of the request asks it before each
/// upstream call (nothing is sent for a client that left) and once the upstream has answered, to
/// record the request as abandoned; a request that only waits (on an identical request's answer)
/// waits for [`Waiting::left`] beside it.
#[derive(Clone, Default)]
pub struct Waiting(Arc<Departure>);

#[derive(Default)]
struct Departure {
    gone: AtomicBool,
    left: Notify,
}

impl Waiting {
    pub fn gone(&self) -> bool {
        self.0.gone.load(Ordering::Acquire)
    }

    /// Returns once the client has gone.
    pub async fn left(&self) {
        let left = self.0.left.notified();
        tokio::pin!(left);
        // Registered before the flag is read: a departure between the two still wakes it.
        left.as_mut().enable();
        if self.gone() {
            return;
        }
        left.await;
    }

    fn leave(&self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.left.notify_waiters();
    }
}

/// A request's rest, polled in place; its output is `Err` if it panicked, so that the client gets
/// an error response rather than a dropped connection.
pub struct Detachable<F: Future + Send + 'static> {
    rest: Option<CatchUnwind<AssertUnwindSafe<Pin<Box<F>>>>>,
    waiting: Waiting,
}

impl<F: Future + Send + 'static> Detachable<F> {
    /// `rest` is given the [`Waiting`] it is to ask.
    pub fn new(rest: impl FnOnce(Waiting) -> F) -> Detachable<F> {
        let waiting = Waiting::default();
        Detachable {
            rest: Some(AssertUnwindSafe(Box::pin(rest(waiting.clone()))).catch_unwind()),
            waiting,
        }
    }
}

impl<F: Future + Send + 'static> Future for Detachable<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rest = self
            .rest
            .as_mut()
            .expect("a finished request's rest is not polled again");
        let output = std::task::ready!(rest.poll_unpin(cx));
        self.rest = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        let Some(rest) = self.rest.take() else {
            return;
        };
        self.waiting.leave();
        // Outside a runtime (it is shutting down and dropping its tasks) nothing can run it on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tracked = Detached::on_this_thread().track();
            runtime.spawn(async move {
                let _ = rest.await;
                drop(tracked);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn a_rest_whose_client_left_runs_to_its_end_and_knows_it() {
        let (release, gate) = oneshot::channel::<()>();
        let (report, ended) = oneshot::channel();
        let mut rest = Box::pin(Detachable::new(|client| async move {
            let waited_for = !client.gone();
            gate.await.unwrap();
            report.send((waited_for, client.gone())).unwrap();
        }));
        assert!(rest.as_mut().now_or_never().is_none());
        drop(rest);
        release.send(()).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), ended).await;
        assert_eq!(seen.unwrap().unwrap(), (true, true));
    }

    /// Break: `leave` not waking those waiting (the flag set alone): the rest never learns.
    #[tokio::test]
    async fn a_rest_waiting_for_its_clients_departure_learns_of_it() {
        let (report, ended) = oneshot::channel();
        let mut rest = Box::pin(Detachable::new(|client| async move {
            client.left().await;
            report.send(client.gone()).unwrap();
        }));
        assert!(rest.as_mut().now_or_never().is_none());
        drop(rest);
        let seen = tokio::time::timeout(Duration::from_secs(10), ended).await;
        assert!(seen.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_rest_that_panics_is_an_error_not_a_lost_connection() {
        let rest = Detachable::new(|_| async { panic!("a bug in the request path") });
        assert!(rest.await.is_err());
    }
}
