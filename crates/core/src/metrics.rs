//! Prometheus metrics and the admin listener every service serves them on
//! (`WORKHOOK_METRICS_ADDR`, never the public port): `GET /metrics`, `GET /healthz`,
//! `GET /readyz`. Series are prefixed `workhook_`.

use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Labels as name/value pairs.
pub type Labels = Vec<(&'static str, String)>;
pub type CounterFamily = Family<Labels, Counter>;
pub type GaugeFamily = Family<Labels, Gauge>;
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.5 ms to 60 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ])
}

/// A new registry whose series all start with `workhook_`.
pub fn registry() -> Registry {
    Registry::with_prefix("workhook")
}

/// Whether the service is ready (for `/readyz`).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct Admin {
    registry: Arc<Registry>,
    ready: Readiness,
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    let mut text = String::new();
    if encode(&mut text, &admin.registry).is_err() {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        axum::http::StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if (admin.ready)() {
        (axum::http::StatusCode::OK, "ready\n")
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "alive\n" }))
        .route("/readyz", get(readyz))
        .with_state(Admin { registry, ready });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Spawns the admin listener, if the service was given one.
pub fn spawn_admin(
    listener: Option<TcpListener>,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    if let Some(listener) = listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin listener (metrics, health)");
        }
        tokio::spawn(async move {
            if let Err(e) = serve_admin(listener, registry, ready, shutdown).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
}

/// Binds the admin address from the config, if there is one.
pub async fn bind_admin(
    addr: Option<std::net::SocketAddr>,
) -> std::io::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => Ok(Some(TcpListener::bind(addr).await?)),
        None => Ok(None),
    }
}
