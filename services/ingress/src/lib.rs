//! workhook's ingress: the webhook endpoint and the IronWorker v2 REST API. A webhook is answered
//! 200 only once JetStream has acknowledged the task it became.
#![forbid(unsafe_code)]

mod api;
mod cache;
mod codes;
mod config;
mod error;
mod legacy;
mod limits;
mod metrics;
mod schedules;
mod state;
mod verify;
mod views;

use std::sync::{atomic::Ordering, Arc};
use std::time::Duration;

use anyhow::Context;
use axum::{
    extract::DefaultBodyLimit,
    routing::{get, post},
    Router,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use workhook_proto::registry_client::RegistryClient;

pub use config::Config;
pub use error::ApiError;
pub use state::AppState;

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let upload_limit = state.max_package_bytes + 1024 * 1024;
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/2/projects/{project_id}/tasks/webhook", post(api::webhook))
        .route(
            "/2/projects/{project_id}/tasks",
            get(api::list_tasks).post(api::queue_tasks),
        )
        .route(
            "/2/projects/{project_id}/tasks/{task_id}",
            get(api::get_task),
        )
        .route(
            "/2/projects/{project_id}/tasks/{task_id}/log",
            get(api::task_log),
        )
        .route(
            "/2/projects/{project_id}/tasks/{task_id}/outlog",
            get(api::task_outlog),
        )
        .route(
            "/2/projects/{project_id}/tasks/{task_id}/cancel",
            post(api::cancel_task),
        )
        .route(
            "/2/projects/{project_id}/tasks/{task_id}/progress",
            post(api::set_progress),
        )
        .route(
            "/2/projects/{project_id}/tasks/{task_id}/retry",
            post(api::retry_task),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}",
            get(codes::info).delete(codes::delete),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}/revisions",
            get(codes::revisions),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}/download",
            get(codes::download),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}/stats",
            get(codes::stats),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}/pause_task_queue",
            post(codes::pause),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}/resume_task_queue",
            post(codes::resume),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}/cancel_all",
            post(codes::cancel_all),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}/webhook_tokens",
            get(codes::list_webhook_tokens).post(codes::create_webhook_token),
        )
        .route(
            "/2/projects/{project_id}/codes/{code_id}/webhook_tokens/{token_id}",
            axum::routing::delete(codes::revoke_webhook_token),
        )
        .route(
            "/2/projects/{project_id}/schedules",
            get(schedules::list).post(schedules::create),
        )
        .route(
            "/2/projects/{project_id}/schedules/{schedule_id}",
            get(schedules::info).put(schedules::update),
        )
        .route(
            "/2/projects/{project_id}/schedules/{schedule_id}/cancel",
            post(schedules::cancel),
        )
        .route(
            "/2/projects/{project_id}/codes",
            get(api::list_codes)
                .post(api::upload_code)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        // Bodies are read with their own limits, which answer 413 as JSON.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::guard,
        ))
        .with_state(state)
}

/// Runs the ingress on `listener` until `shutdown` is cancelled; then it reports not ready,
/// stops accepting and lets in-flight requests finish for at most `drain_secs`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let layout = config.nats.layout()?;
    let publish_timeout = Duration::from_millis(config.publish_timeout_ms.max(1));
    let nats = async_nats::ConnectOptions::new()
        .name("workhook-ingress")
        .connection_timeout(Duration::from_secs(5))
        .connect(config.nats.url.as_str())
        .await
        .context("connecting to NATS (NATS_URL)")?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(publish_timeout)
        .build(nats.clone());
    config
        .nats
        .ensure_stream(&layout, &js)
        .await
        .map_err(|e| anyhow::anyhow!("creating stream {}: {e}", layout.stream()))?;
    let payloads = layout
        .ensure_payload_bucket(&js, config.nats.replicas)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "creating the payload bucket {}: {e}",
                layout.payload_bucket()
            )
        })?;
    let channel = Endpoint::from_shared(config.registry_url.clone())
        .context("WORKHOOK_REGISTRY_URL")?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let state = Arc::new(AppState::new(
        RegistryClient::new(channel.clone()),
        channel,
        nats.clone(),
        js,
        layout,
        payloads,
        &config,
    ));
    let app = router(state.clone());
    workhook_core::metrics::spawn_admin(
        admin,
        state.metrics.registry.clone(),
        {
            let state = state.clone();
            Arc::new(move || {
                !state.draining.load(Ordering::Relaxed)
                    && state.nats.connection_state() == async_nats::connection::State::Connected
            })
        },
        shutdown.clone(),
    );
    tracing::info!(addr = %listener.local_addr()?, "ingress listening");

    let stop_accepting = {
        let shutdown = shutdown.clone();
        let state = state.clone();
        async move {
            shutdown.cancelled().await;
            state.draining.store(true, Ordering::Relaxed);
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(stop_accepting);
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(Duration::from_secs(config.drain_secs)).await;
    };
    tokio::select! {
        served = server => served.context("serving HTTP")?,
        _ = drain_deadline => tracing::warn!("drain deadline passed; closing remaining requests"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), nats.drain()).await;
    Ok(())
}
