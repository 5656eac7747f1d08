//! Logs and traces for the binaries.
//!
//! Logs: `RUST_LOG` filters (default `info`); `WORKHOOK_LOG_FORMAT=json` writes one JSON object a
//! line, for log collectors, with the fields of every span the line was written in (`span` and
//! `spans`): a line written while a task is handled carries the task's `task_id` (and its
//! `trace_id` when traces are on).
//!
//! Traces: OpenTelemetry over OTLP/gRPC, off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`OTEL_SDK_DISABLED=true` turns them off again).
//! `OTEL_SERVICE_NAME` names the service (default `workhook-ingress`, `workhook-registry` or
//! `workhook-runner`); the exporter also honours the other standard `OTEL_EXPORTER_OTLP_*` and
//! `OTEL_BSP_*` variables. Spans are batched and sent by a background thread; `Telemetry::shutdown`
//! sends what is left.
//!
//! The trace context crosses NATS as W3C `traceparent` / `tracestate` message headers (`inject_span`,
//! `set_parent_from`) and gRPC as the same metadata (`GrpcTraceContext`, `set_parent_from_http`).
//! With traces off, each of these returns after reading one flag: nothing is injected or parsed.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether spans are exported: set once, when a tracer provider is installed.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether traces are on in this process.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// What `install` sets up, read from the environment by `from_env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The OTLP/gRPC collector; `None`: traces off.
    pub otlp_endpoint: Option<String>,
    /// One JSON object a line rather than text.
    pub json_logs: bool,
}

impl TelemetryConfig {
    /// From the process environment; `default_service` names the service unless
    /// `OTEL_SERVICE_NAME` does.
    pub fn from_env(default_service: &str) -> Self {
        Self::from_lookup(default_service, |name| {
            // One call a name, so scripts/validate-deploy finds each name the code reads.
            match name {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => {
                    std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok()
                }
                "OTEL_EXPORTER_OTLP_ENDPOINT" => std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok(),
                "OTEL_SDK_DISABLED" => std::env::var("OTEL_SDK_DISABLED").ok(),
                "OTEL_SERVICE_NAME" => std::env::var("OTEL_SERVICE_NAME").ok(),
                "WORKHOOK_LOG_FORMAT" => std::env::var("WORKHOOK_LOG_FORMAT").ok(),
                _ => None,
            }
        })
    }

    /// From `get`, which answers a variable's value (so this is tested without touching the
    /// process environment). Empty values count as unset, as the OpenTelemetry spec says.
    pub fn from_lookup(default_service: &str, get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let otlp_endpoint = if disabled {
            None
        } else {
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        };
        TelemetryConfig {
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string()),
            otlp_endpoint,
            json_logs: get("WORKHOOK_LOG_FORMAT").is_some_and(|v| v == "json"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter cannot be built (OTEL_EXPORTER_OTLP_ENDPOINT)")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// The installed telemetry. Keep it until the end of `main` and call `shutdown`: spans still in
/// the batch are sent only then.
#[must_use = "call shutdown() on the way out, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends every span that has ended so far and waits until the collector took them.
    pub async fn force_flush(&self) {
        if let Some(provider) = self.provider.clone() {
            // The SDK blocks the calling thread while the export runs on the runtime.
            let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "flushing spans failed");
            }
        }
    }

    /// Sends the spans still batched and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            TRACING.store(false, Ordering::Relaxed);
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                eprintln!("shutting down the span exporter: {e}");
            }
        }
    }
}

/// For the binaries: logs to stdout and, when configured, traces to the collector, from the
/// environment. Call it from inside the Tokio runtime (the exporter's channel lives there).
pub fn init(default_service: &str) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    install(
        &TelemetryConfig::from_env(default_service),
        filter,
        std::io::stdout,
    )
}

/// Logs only, from the environment; does nothing when a subscriber is already installed (the
/// test harness calls it once per stack).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let mut config = TelemetryConfig::from_env("workhook");
    config.otlp_endpoint = None;
    let _ = install(&config, filter, std::io::stdout);
}

/// Installs the global subscriber: `filter`, the log lines written to `writer`, and the span
/// exporter when `config` names a collector. Must run inside a Tokio runtime when it does.
pub fn install<W>(
    config: &TelemetryConfig,
    filter: EnvFilter,
    writer: W,
) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let provider = match &config.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("workhook"))
            .with_tracked_inactivity(false)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(log_layer(config.json_logs, writer))
        .with(traces)
        .try_init();
    if installed.is_err() {
        if let Some(p) = provider {
            let _ = p.shutdown();
        }
        return Err(TelemetryError::AlreadyInstalled);
    }
    if let Some(endpoint) = &config.otlp_endpoint {
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!(%endpoint, service = %config.service_name, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// The log lines: text, or JSON carrying the fields of the current span and of every span
/// around it (so the task id of a `task` span is on each line written inside it).
fn log_layer<S, W>(json: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    if json {
        layer
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed()
    } else {
        layer.boxed()
    }
}

/// Records the span's trace id in its `trace_id` field (declared `Empty`), so JSON log lines
/// carry it; nothing when traces are off. For root spans: the webhook, the task.
pub fn record_trace_id(span: &Span) {
    if !tracing_enabled() {
        return;
    }
    let cx = span.context();
    let trace = cx.span().span_context().trace_id();
    if trace != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace));
    }
}

/// Adds `span`'s trace context (`traceparent`, `tracestate`) to a NATS message's headers (see
/// `Envelope::queue_message`). Nothing when traces are off.
pub fn inject_span(span: &Span, headers: &mut HeaderMap) {
    if tracing_enabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut NatsHeaders(headers));
    }
}

/// Makes `span` (not yet entered) a child of the trace context in a NATS message's headers, and
/// records its `trace_id`. Nothing when traces are off; a root span when the headers carry no
/// context.
pub fn set_parent_from(span: &Span, headers: Option<&HeaderMap>) {
    if !tracing_enabled() {
        return;
    }
    if let Some(headers) = headers {
        set_parent(span, &NatsHeadersRef(headers));
    }
    record_trace_id(span);
}

/// Makes `span` a child of the trace context in HTTP (gRPC) request headers. Nothing when traces
/// are off.
pub fn set_parent_from_http(span: &Span, headers: &tonic::codegen::http::HeaderMap) {
    if tracing_enabled() {
        set_parent(span, &HttpHeaders(headers));
    }
}

fn set_parent(span: &Span, carrier: &dyn Extractor) {
    let cx = TraceContextPropagator::new().extract(carrier);
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started: it then stays as it is.
        let _ = span.set_parent(cx);
    }
}

/// A tonic client interceptor that sends the current span's trace context as gRPC metadata.
/// Nothing when traces are off.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceContext;

impl tonic::service::Interceptor for GrpcTraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if tracing_enabled() {
            TraceContextPropagator::new().inject_context(
                &Span::current().context(),
                &mut GrpcMetadata(request.metadata_mut()),
            );
        }
        Ok(request)
    }
}

struct NatsHeaders<'a>(&'a mut HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.contains(['\r', '\n']) {
            self.0.insert(key, value);
        }
    }
}

struct NatsHeadersRef<'a>(&'a HeaderMap);

impl Extractor for NatsHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

struct HttpHeaders<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct GrpcMetadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for GrpcMetadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        if let (Ok(key), Ok(value)) = (key, value.parse()) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::Instrument;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        let c = TelemetryConfig::from_lookup("workhook-runner", lookup(&[]));
        assert_eq!(
            c,
            TelemetryConfig {
                service_name: "workhook-runner".into(),
                otlp_endpoint: None,
                json_logs: false,
            }
        );
        let c = TelemetryConfig::from_lookup(
            "workhook-runner",
            lookup(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
                ("OTEL_SERVICE_NAME", ""),
            ]),
        );
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.service_name, "workhook-runner");

        let c = TelemetryConfig::from_lookup(
            "workhook-ingress",
            lookup(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("WORKHOOK_LOG_FORMAT", "json"),
            ]),
        );
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(c.service_name, "edge");
        assert!(c.json_logs);
    }

    #[test]
    fn the_traces_endpoint_wins_and_the_sdk_switch_turns_traces_off() {
        let both = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://all:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ];
        let c = TelemetryConfig::from_lookup("x", lookup(&both));
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://traces:4317"));
        let mut off = both.to_vec();
        off.push(("OTEL_SDK_DISABLED", "TRUE"));
        assert_eq!(
            TelemetryConfig::from_lookup("x", lookup(&off)).otlp_endpoint,
            None
        );
    }

    /// Log lines collected in memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Lines;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn json_lines_written_inside_a_task_span_carry_its_task_id() {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(log_layer(true, lines.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any task");
            let task =
                tracing::info_span!("task", task_id = "T1", trace_id = tracing::field::Empty);
            runtime.block_on(
                async {
                    tracing::info!("running");
                    async { tracing::warn!(error = "x", "heartbeat failed") }
                        .instrument(tracing::info_span!("keep_lease"))
                        .await;
                }
                .instrument(task),
            );
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0].get("spans"), None, "{}", lines[0]);
        for line in &lines[1..] {
            assert_eq!(line["spans"][0]["name"], "task", "{line}");
            assert_eq!(line["spans"][0]["task_id"], "T1", "{line}");
        }
        assert_eq!(lines[1]["span"]["task_id"], "T1");
        assert_eq!(lines[2]["span"]["name"], "keep_lease");
        assert_eq!(lines[2]["fields"]["message"], "heartbeat failed");
    }
}
