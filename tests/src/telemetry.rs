//! What the trace and log tests observe with: an OTLP collector in-process (a tonic server for
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` on a random port, keeping every
//! span it is sent) and a writer that keeps the log lines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A span as the collector received it; ids in lowercase hex, as in `traceparent`.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attribute values as text.
    pub attributes: HashMap<String, String>,
}

impl CollectedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received(Mutex<Vec<CollectedSpan>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attributes(&r.attributes).remove("service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(CollectedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(span.trace_id),
                        span_id: hex::encode(span.span_id),
                        parent_span_id: hex::encode(span.parent_span_id),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An OTLP/gRPC trace collector on 127.0.0.1, stopped on drop.
pub struct OtlpCollector {
    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` would say, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    received: Arc<Received>,
    stop: CancellationToken,
    server: JoinHandle<()>,
}

impl OtlpCollector {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Received::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let service = TraceServiceServer::from_arc(received.clone());
            let stop = stop.clone();
            async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        stop.cancelled_owned(),
                    )
                    .await
                    .expect("the OTLP collector serving");
            }
        });
        OtlpCollector {
            endpoint,
            received,
            stop,
            server,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.received.0.lock().unwrap().clone()
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.stop.cancel();
        self.server.abort();
    }
}

/// Log output kept in memory, one line a log event; a `MakeWriter` for
/// `workhook_core::telemetry::install`.
#[derive(Clone, Default)]
pub struct LogLines(Arc<Mutex<Vec<u8>>>);

impl LogLines {
    /// The lines written so far, each parsed as JSON (so JSON logs must be on).
    pub fn json(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }
}

impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for LogLines {
    type Writer = LogLines;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}
