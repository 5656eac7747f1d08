//! The registry's series: what the recorder records and how far behind it is, the queue depth
//! per priority, gRPC latencies by method and the database pool's use.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use workhook_core::metrics::{latency_histogram, GaugeFamily, HistogramFamily};
use workhook_core::stream::PRIORITIES;

pub struct RegistryMetrics {
    pub registry: Arc<Registry>,
    pub recorded: Counter,
    pub recorder_lag: Gauge,
    pub queue_depth: GaugeFamily,
    pub grpc_seconds: HistogramFamily,
    pub db_connections: GaugeFamily,
}

impl RegistryMetrics {
    pub fn new() -> Self {
        let mut registry = workhook_core::metrics::registry();
        let recorded = Counter::default();
        registry.register(
            "recorded_tasks",
            "Queued tasks the recorder recorded in Postgres (or found already recorded)",
            recorded.clone(),
        );
        let recorder_lag = Gauge::default();
        registry.register(
            "recorder_lag",
            "Tasks in the stream the recorder has not recorded yet",
            recorder_lag.clone(),
        );
        let queue_depth = GaugeFamily::default();
        registry.register(
            "queue_depth",
            "Tasks waiting for a runner, by priority (pending plus delivered and not yet acked)",
            queue_depth.clone(),
        );
        let grpc_seconds = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "grpc_request_seconds",
            "Registry gRPC call latency, by method",
            grpc_seconds.clone(),
        );
        let db_connections = GaugeFamily::default();
        registry.register(
            "db_pool_connections",
            "Postgres pool connections, by state (idle, in_use)",
            db_connections.clone(),
        );
        Self {
            registry: Arc::new(registry),
            recorded,
            recorder_lag,
            queue_depth,
            grpc_seconds,
            db_connections,
        }
    }

    /// Samples what is read rather than counted (consumer backlogs, the pool) every few
    /// seconds, until `shutdown`.
    pub async fn sample(
        self: Arc<Self>,
        pool: PgPool,
        recorder: PullConsumer,
        runners: Vec<PullConsumer>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Ok(info) = recorder.get_info().await {
                self.recorder_lag
                    .set((info.num_pending + info.num_ack_pending as u64) as i64);
            }
            for (priority, consumer) in PRIORITIES.iter().zip(&runners) {
                if let Ok(info) = consumer.get_info().await {
                    self.queue_depth
                        .get_or_create(&vec![("priority", priority.to_string())])
                        .set((info.num_pending + info.num_ack_pending as u64) as i64);
                }
            }
            let idle = pool.num_idle() as i64;
            let size = i64::from(pool.size());
            self.db_connections
                .get_or_create(&vec![("state", "idle".to_string())])
                .set(idle);
            self.db_connections
                .get_or_create(&vec![("state", "in_use".to_string())])
                .set(size - idle);
        }
    }
}

/// A tower layer that times every gRPC call by method, and runs it in a `grpc` span (the
/// handlers record the task id in it). With traces on, the span continues the caller's trace
/// (the `traceparent` metadata a runner sends).
#[derive(Clone)]
pub struct GrpcTiming(pub Arc<RegistryMetrics>);

impl<S> tower_layer::Layer<S> for GrpcTiming {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timed {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    metrics: Arc<RegistryMetrics>,
}

impl<S, B> tower_service::Service<tonic::codegen::http::Request<B>> for Timed<S>
where
    S: tower_service::Service<tonic::codegen::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let span = tracing::info_span!(
            "grpc",
            otel.name = %format_args!("Registry/{method}"),
            otel.kind = "server",
            rpc.method = %method,
            task_id = tracing::field::Empty,
        );
        workhook_core::telemetry::set_parent_from_http(&span, request.headers());
        let started = Instant::now();
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let answer = call.await;
                metrics
                    .grpc_seconds
                    .get_or_create(&vec![("method", method)])
                    .observe(started.elapsed().as_secs_f64());
                answer
            }
            .instrument(span),
        )
    }
}
