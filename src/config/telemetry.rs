//! `[telemetry]`: whether each request's trace is exported over OTLP, to where, how, and with
//! what in it.

use url::Url;

use super::Secret;
use super::file::{OtlpProtocol, RawTelemetry};
use super::resolver::Resolver;

/// Traces, when `otlp_endpoint` is set; `None` otherwise, and then nothing is traced.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub otlp: Option<Otlp>,
}

#[derive(Debug)]
pub struct Otlp {
    /// Where spans are sent: for HTTP the full URL of the traces endpoint (`/v1/traces` added to a
    /// URL without a path); for gRPC the collector's address.
    pub endpoint: Url,
    pub protocol: OtlpProtocol,
    /// Sent with every export. Their values are secrets (a collector's token): never logged.
    pub headers: Vec<(String, Secret)>,
    pub service_name: String,
    /// The share of requests traced that come without a parent's sampling decision.
    pub sample_ratio: f64,
    /// Prompts and answers go into the spans (`gen_ai.input.messages`, `gen_ai.output.messages`).
    pub capture_content: bool,
}

impl Otlp {
    pub const DEFAULT_SERVICE_NAME: &str = "tierwise";
    /// OTLP's registered gRPC port; everything else is taken as HTTP (4318).
    const GRPC_PORT: u16 = 4317;
}

impl Resolver<'_> {
    pub(super) fn telemetry(&mut self, raw: &RawTelemetry) -> Telemetry {
        let Some(endpoint) = &raw.otlp_endpoint else {
            return Telemetry::default();
        };
        let key = "telemetry.otlp_endpoint";
        let Some(value) = self.string(endpoint, key) else {
            return Telemetry::default();
        };
        let mut url = match Url::parse(&value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => url,
            _ => {
                self.issue_at(
                    endpoint.span().start,
                    key,
                    "is not an http:// or https:// URL; write e.g. \"http://otel-collector:4318\" (HTTP) or \"http://otel-collector:4317\" (gRPC)",
                );
                return Telemetry::default();
            }
        };
        let protocol =
            raw.otlp_protocol
                .unwrap_or(if url.port_or_known_default() == Some(Otlp::GRPC_PORT) {
                    OtlpProtocol::Grpc
                } else {
                    OtlpProtocol::Http
                });
        if protocol == OtlpProtocol::Http && matches!(url.path(), "" | "/") {
            url.set_path("/v1/traces");
        }
        let mut headers = Vec::new();
        for (name, value) in raw.otlp_headers.iter().flatten() {
            let key = format!("telemetry.otlp_headers.{}", name.get_ref());
            let valid_name = http::HeaderName::from_bytes(name.get_ref().as_bytes()).is_ok();
            if !valid_name {
                self.issue_at(name.span().start, &key, "is not a valid HTTP header name");
                continue;
            }
            let Some(resolved) = self.string(value, &key) else {
                continue;
            };
            // The message names the header, never its value: it is usually a token.
            if http::HeaderValue::from_str(&resolved).is_err() {
                self.issue_at(
                    value.span().start,
                    &key,
                    "is not a valid HTTP header value (a line break or a control character)",
                );
                continue;
            }
            headers.push((name.get_ref().to_ascii_lowercase(), Secret::new(resolved)));
        }
        let service_name = match &raw.service_name {
            Some(name) => self
                .string(name, "telemetry.service_name")
                .unwrap_or_default(),
            None => Otlp::DEFAULT_SERVICE_NAME.to_string(),
        };
        let sample_ratio = raw
            .sample_ratio
            .as_ref()
            .and_then(|ratio| self.fraction(ratio, "telemetry.sample_ratio"))
            .unwrap_or(1.0);
        Telemetry {
            otlp: Some(Otlp {
                endpoint: url,
                protocol,
                headers,
                service_name,
                sample_ratio,
                capture_content: raw.capture_content.unwrap_or(false),
            }),
        }
    }
}
