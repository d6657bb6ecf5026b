//! Each request as a trace, exported over OTLP when `[telemetry] otlp_endpoint` is set: a span of
//! kind SERVER for the request and one of kind CLIENT per upstream call, following the
//! OpenTelemetry GenAI semantic conventions, in the client's trace where it sent a `traceparent`,
//! and carried upstream on each call.
//!
//! The request path pays for a trace only where one is exported: it draws the ids and reads the
//! clock ([`RequestTrace`], [`AttemptTrace`]), and at its end [`Traces`] — one more consumer of
//! finished requests — hands a few names and numbers to a bounded queue without waiting. The
//! exporter's task ([`Exporter`]), on the process's runtime, builds the spans from them
//! ([`span`]), batches them and sends each batch with a deadline. Spans that find the queue full,
//! or whose export fails or times out, are dropped and counted
//! (`tierwise_trace_spans_dropped_total`); a request never waits on a collector. Without an
//! endpoint nothing here runs: no ids, no clock, no queue.

mod context;
mod record;
mod span;

use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use context::{AttemptTrace, Propagation, RequestTrace};
pub use record::{Called, Finished, StreamFacts};

use crate::config::Otlp;
use crate::config::file::OtlpProtocol;
use crate::ledger::RequestRow;

/// Finished requests waiting for the exporter: a linger's worth of 40,000 requests a second, and
/// what arrives while an export is in flight (each holds its answer until its spans are built, so
/// at most some tens of MB while a collector is stuck).
const QUEUE: usize = 8192;
/// Spans sent in one export at most.
const MAX_BATCH: usize = 512;
/// How long finished requests gather before their spans are built and exported: under load one
/// wake-up of the exporter per linger, not one per request (which cost ~30 µs of CPU per request
/// at one connection, docs/benchmarks.md).
const LINGER: Duration = Duration::from_millis(200);
/// How long one export may take before its spans are dropped: a slow collector costs spans, not
/// memory or requests.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the request path holds where traces are exported: how to begin a request's trace.
#[derive(Debug, Clone, Copy)]
pub struct Tracing {
    sample_ratio: f64,
    capture_content: bool,
}

impl Tracing {
    pub fn new(otlp: &Otlp) -> Tracing {
        Tracing {
            sample_ratio: otlp.sample_ratio,
            capture_content: otlp.capture_content,
        }
    }

    /// The trace of a request that came with `headers`.
    pub fn begin(&self, headers: &http::HeaderMap) -> Box<RequestTrace> {
        Box::new(RequestTrace::begin(
            headers,
            self.sample_ratio,
            self.capture_content,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the trace exporter for telemetry.otlp_endpoint: {0}")]
pub struct TraceError(String);

/// The consumer of finished requests that queues their traces for the exporter.
pub struct Traces(mpsc::Sender<Box<Finished>>);

impl Traces {
    /// Queues a finished request's trace, with its final ledger row, without waiting: a full
    /// queue drops it, counted. (Called as a consumer of finished requests: `outcome` registers it.)
    pub fn queue(&self, mut finished: Box<Finished>, row: &RequestRow) {
        finished.read_row(row);
        if let Err(mpsc::error::TrySendError::Full(finished)) = self.0.try_send(finished) {
            crate::metrics::trace_spans_dropped(1 + finished.attempts.len(), "queue_full");
        }
    }
}

/// The exporter's task and the means to stop it.
pub struct Exporter {
    task: JoinHandle<()>,
    close: oneshot::Sender<()>,
}

impl Exporter {
    /// Starts the exporter on the current runtime (the process's, which outlives every serving
    /// thread). Nothing is sent until the first request ends.
    pub fn spawn(otlp: &Otlp) -> Result<(Traces, Exporter), TraceError> {
        let mut exporter = build(otlp)?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(otlp.service_name.clone())
                .build(),
        );
        let scope = InstrumentationScope::builder("tierwise")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let (sender, receiver) = mpsc::channel(QUEUE);
        let (close, closed) = oneshot::channel();
        let task = tokio::spawn(run(exporter, scope, receiver, closed));
        Ok((Traces(sender), Exporter { task, close }))
    }

    /// Exports what is queued and stops, within `deadline`: a collector that is down does not
    /// hold the shutdown up.
    pub async fn finish(self, deadline: Duration) {
        let _ = self.close.send(());
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            tracing::warn!(
                "the trace exporter did not send its last spans within {} ms of shutdown; they are dropped",
                deadline.as_millis()
            );
            task.abort();
        }
    }
}

fn build(otlp: &Otlp) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    let failed = |err: opentelemetry_otlp::ExporterBuildError| TraceError(err.to_string());
    let endpoint = otlp.endpoint.to_string();
    let no_retries = opentelemetry_otlp::RetryPolicy::disabled();
    match otlp.protocol {
        OtlpProtocol::Http => {
            let headers = otlp
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.expose().to_string()))
                .collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(headers)
                .with_retry_policy(no_retries)
                .build()
                .map_err(failed)
        }
        OtlpProtocol::Grpc => {
            use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
            // The config checked each header's name and value; a message never shows a value.
            let mut headers = http::HeaderMap::new();
            for (name, value) in &otlp.headers {
                let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    TraceError(format!("telemetry.otlp_headers.{name}: not a header name"))
                })?;
                let value = http::HeaderValue::from_str(value.expose()).map_err(|_| {
                    TraceError(format!("telemetry.otlp_headers.{name}: not a header value"))
                })?;
                headers.insert(name, value);
            }
            let metadata = MetadataMap::from_headers(headers);
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(metadata)
                .with_retry_policy(no_retries);
            if otlp.endpoint.scheme() == "https" {
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_enabled_roots(),
                );
            }
            builder.build().map_err(failed)
        }
    }
}

async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    mut receiver: mpsc::Receiver<Box<Finished>>,
    mut closed: oneshot::Receiver<()>,
) {
    let mut closing = false;
    let mut failing = false;
    loop {
        let first = if closing {
            receiver.try_recv().ok()
        } else {
            tokio::select! {
                finished = receiver.recv() => finished,
                _ = &mut closed => {
                    closing = true;
                    receiver.close();
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        if !closing {
            // Asleep while requests gather: waking for each one cost more CPU than its spans.
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = &mut closed => {
                    closing = true;
                    receiver.close();
                }
            }
        }
        let mut finished = vec![first];
        while let Ok(more) = receiver.try_recv() {
            finished.push(more);
        }
        let mut spans = finished
            .into_iter()
            .flat_map(|finished| span::spans(*finished, &scope));
        loop {
            let batch: Vec<SpanData> = spans.by_ref().take(MAX_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            failing = export(&exporter, batch, failing).await;
        }
    }
}

/// Sends one batch within `EXPORT_TIMEOUT`, counting what arrived or was dropped; whether the
/// collector is failing now. The first failure of an outage is logged, and its end.
async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    failing: bool,
) -> bool {
    let spans = batch.len();
    let failure = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some(format!(
            "no answer within {} ms",
            EXPORT_TIMEOUT.as_millis()
        )),
    };
    match failure {
        None => {
            crate::metrics::trace_spans_exported(spans);
            if failing {
                tracing::info!("the trace collector takes spans again");
            }
            false
        }
        Some(why) => {
            crate::metrics::trace_spans_dropped(spans, "export_failed");
            if !failing {
                tracing::warn!(
                    spans,
                    "trace export failed ({why}); spans are dropped until the collector takes them"
                );
            }
            true
        }
    }
}
