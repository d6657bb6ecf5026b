//! Serving threads, one event loop each, the way nginx runs its workers: every thread has its own
//! listener on the same port (SO_REUSEPORT, so the kernel spreads connections), its own
//! single-threaded runtime and its own pooled upstream connections, and serves a request from
//! accept to answer without handing it to another thread. Measured on the 2-core benchmark machine,
//! a work-stealing runtime spent a third of its CPU waking threads for each other
//! (docs/benchmarks.md). What the threads share — configuration, health, ledger queue — is
//! behind `Arc`s and atomics.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, oneshot};

use super::detach::Detached;
use super::{App, StartError, router};

/// Period of each serving thread's anchor timer; see `anchor_timers`.
const TIMER_ANCHOR: Duration = Duration::from_millis(500);

struct Worker {
    stop: oneshot::Sender<()>,
    kill: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

pub struct Workers {
    pub addr: SocketAddr,
    workers: Vec<Worker>,
}

impl Workers {
    /// Binds `listen` once per thread (port 0: the first bind picks the port the others share) and
    /// starts the threads.
    pub fn spawn(app: &App, listen: SocketAddr, threads: usize) -> Result<Workers, StartError> {
        let bind_error = |source| StartError::Bind {
            addr: listen,
            source,
        };
        refuse_a_taken_port(listen).map_err(bind_error)?;
        let first = reuseport_listener(listen).map_err(bind_error)?;
        let addr = first.local_addr().map_err(bind_error)?;
        let mut listeners = vec![first];
        for _ in 1..threads.max(1) {
            listeners.push(reuseport_listener(addr).map_err(bind_error)?);
        }
        // Each thread calls with its own clients, which its snapshot holds.
        let apps: Vec<Arc<App>> = (0..listeners.len())
            .map(|thread| Arc::new(app.on_thread(thread)))
            .collect();
        let mut workers = Vec::with_capacity(listeners.len());
        for (index, (listener, app)) in listeners.into_iter().zip(apps).enumerate() {
            let (stop, stopped) = oneshot::channel::<()>();
            let (kill, killed) = oneshot::channel::<()>();
            let (finished, done) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("tierwise-{index}"))
                .spawn(move || {
                    serve_thread(app, listener, stopped, killed);
                    let _ = finished.send(());
                })
                .map_err(|source| StartError::Bind { addr, source })?;
            workers.push(Worker {
                stop,
                kill,
                done,
                thread,
            });
        }
        Ok(Workers { addr, workers })
    }

    /// Stops accepting, lets in-flight requests finish for at most `grace`, then cuts off the rest.
    pub async fn shutdown(self, grace: Duration) {
        let mut pending = Vec::with_capacity(self.workers.len());
        for worker in self.workers {
            let _ = worker.stop.send(());
            pending.push((worker.kill, worker.done, worker.thread));
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (kill, done, thread) in pending {
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                tracing::warn!(
                    "in-flight requests did not finish within {} ms; closing them",
                    grace.as_millis()
                );
                let _ = kill.send(());
            }
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn serve_thread(
    app: Arc<App>,
    listener: std::net::TcpListener,
    stopped: oneshot::Receiver<()>,
    killed: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start a serving thread's runtime: {err}");
            return;
        }
    };
    runtime.block_on(async move {
        tokio::spawn(anchor_timers());
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!("cannot register the listener: {err}");
                return;
            }
        };
        let detached = Detached::on_this_thread();
        let served = async {
            serve(app, listener, stopped).await;
            // Requests whose clients left are still paid for: they get the same grace.
            detached.finished().await;
        };
        tokio::select! {
            () = served => {}
            _ = killed => {
                // What the runtime drops from here on is cut off: its records say so.
                crate::outcome::cutting_off_this_thread();
                let cut = detached.running();
                if cut > 0 {
                    tracing::warn!(
                        cut,
                        "requests whose clients had left were cut at the end of \
                         server.shutdown_grace_ms; the ledger records them as cut_at_shutdown, \
                         their cost unknown"
                    );
                }
            }
        }
    });
    // What is still running after a kill is dropped, and blocking work (a token count) is left
    // to end with the process: the grace bounds the shutdown, whatever runs on this thread.
    runtime.shutdown_background();
}

/// The most a request's head (request line and headers) may take; nginx's default is 4 × 8 kB.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Accepts and serves connections until `stopped`, then lets the open ones finish their requests.
/// Each connection has `server.header_timeout` to send a request's headers — which also closes a
/// keep-alive connection left idle that long — and this thread holds at most its share of
/// `server.max_connections`: a connection over it is closed at once rather than queued.
async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    mut stopped: oneshot::Receiver<()>,
) {
    // What the serving loop is built with is fixed for the process (docs/operations.md#reload).
    let snapshot = app.snapshot();
    let server = &snapshot.config.server;
    let share = (server.max_connections / server.threads.max(1)).max(1);
    let connections = Arc::new(Semaphore::new(share));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(server.header_timeout)
        // Headers are read into this buffer: a request whose headers outgrow it is refused with
        // 431 (hyper's default, ~400 kB, let a 200 kB header line through). Bodies are streamed
        // through it, so it does not cap them.
        .max_buf_size(MAX_HEADER_BYTES);
    let router = router(app.clone());
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: give the open connections a moment.
                    tracing::warn!("cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!("server.max_connections reached: a new connection is closed");
            continue;
        };
        // Keep-alive clients on this host must not wait ~40 ms on Nagle's algorithm meeting
        // delayed ACKs.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on a client connection: {err}");
        }
        let tcp = StallLimit::new(tcp, server.write_timeout);
        let connection =
            http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that stops halfway is its own business, not a server error.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A client connection whose writes fail once one has made no progress for `limit`
/// (`server.write_timeout_ms`). hyper polls a response's body only when the socket takes its
/// bytes, so a client that stops reading stops the body's own deadlines too: its stream would hold
/// its upstream call and in-flight slot for as long as the client keeps the socket open. The
/// failed write ends the connection; the dropped body records the request and frees the slot.
struct StallLimit {
    tcp: tokio::net::TcpStream,
    limit: Duration,
    /// Armed while a write waits; made at the first stall, reset at the next.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl StallLimit {
    fn new(tcp: tokio::net::TcpStream, limit: Duration) -> StallLimit {
        StallLimit {
            tcp,
            limit,
            stalled: None,
            armed: false,
        }
    }

    /// `polled` as the socket gave it, unless it is one more wait of a write stalled for `limit`.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = tokio::time::Instant::now() + self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes for server.write_timeout_ms",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for StallLimit {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallLimit {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.bounded(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.bounded(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.tcp).poll_flush(cx);
        self.bounded(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.tcp).poll_shutdown(cx);
        self.bounded(cx, polled)
    }
}

/// Keeps a timer due within `TIMER_ANCHOR` on this thread's runtime. tokio's time driver wakes its
/// event loop (an eventfd write and one more `epoll_wait` return) whenever a timer is registered
/// that is due before the loop's next planned wake-up, even from the loop's own thread
/// (tokio-rs/tokio#5207). Every upstream call registers its first-byte timeout, so without an
/// earlier timer each request paid that extra round, seen with strace at concurrency 1. With this
/// anchor, a timeout longer than half a second never moves the next wake-up forward; the price is
/// two idle wake-ups a second.
async fn anchor_timers() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// SO_REUSEPORT would let a second tierwise (or anything else listening with it) share the port,
/// silently splitting traffic between two configurations. A plain bind is refused by any listener
/// on the port, so one is tried and dropped first. Port 0 is left to the first real bind.
fn refuse_a_taken_port(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Only TIME_WAIT leftovers of an earlier run are let through, never a listener.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into()).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                err.kind(),
                "the port is already in use (another tierwise?); stop it or choose another server.listen",
            )
        } else {
            err
        }
    })
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
