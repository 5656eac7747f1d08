//! workhook's registry: tonic gRPC on Postgres. Projects and hashed tokens, code packages, tasks
//! with their state machine, task logs; the recorder that records delayed tasks from the stream,
//! and the catch-up that records other queued tasks when they are read. Migrations are embedded
//! and run at start.
#![forbid(unsafe_code)]

mod catchup;
mod coalesce;
mod config;
mod delays;
mod error;
mod metrics;
mod recorder;
mod scheduler;
mod service;
mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coalesce::Coalescer;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use workhook_proto::registry_server::RegistryServer;

pub use config::Config;
pub use error::RegistryError;

/// Runs `work` every `period` until `shutdown`; a failed round is logged and the next one tries
/// again. The shape of the registry's periodic jobs (the scheduler, the release of delayed tasks).
pub(crate) async fn every<F, Fut>(
    period: Duration,
    shutdown: CancellationToken,
    what: &'static str,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = work().await {
            tracing::warn!(error = %e, "{what} failed; retrying");
        }
    }
}

/// The migrations, embedded so a registry binary brings its own schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Largest gRPC message the registry accepts (code uploads carry the package).
const MAX_MESSAGE: usize = 96 * 1024 * 1024;

/// How long a pooled connection may sit idle before the pool pings it before handing it out.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);

/// Runs the registry on `listener` until `shutdown` is cancelled; then it reports not serving,
/// stops accepting, finishes in-flight calls and lets the recorder write what it holds.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let layout = config.nats.layout()?;
    let pool = PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection it hands out by default: a round trip to Postgres before
        // each batch, StartTask and lookup. Only a connection that sat idle for a while is
        // checked, as is every one for a few seconds after a query found its connection gone
        // (Postgres restarted: the rest of the pool is dead too).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_IDLE_AFTER || error::checking_connections() {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect(&config.database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    MIGRATOR.run(&pool).await.context("running migrations")?;

    let nats = async_nats::ConnectOptions::new()
        .name("workhook-registry")
        .retry_on_initial_connect()
        .connect(config.nats.url.as_str())
        .await
        .context("connecting to NATS (NATS_URL)")?;
    let js = async_nats::jetstream::new(nats.clone());
    let stream = config
        .nats
        .ensure_stream(&layout, &js)
        .await
        .map_err(|e| anyhow::anyhow!("creating stream {}: {e}", layout.stream()))?;
    let consumer = recorder::consumer(&stream, &layout)
        .await
        .map_err(|e| anyhow::anyhow!("creating the recorder consumer: {e}"))?;

    let recorder_stop = CancellationToken::new();
    let metrics = Arc::new(metrics::RegistryMetrics::new());
    let mut runner_consumers = Vec::new();
    for priority in workhook_core::stream::PRIORITIES {
        runner_consumers.push(
            stream
                .get_consumer(&workhook_core::stream::runner_consumer(priority))
                .await
                .map_err(|e| anyhow::anyhow!("reading the runners' consumers: {e}"))?,
        );
    }
    tokio::spawn(metrics.clone().sample(
        pool.clone(),
        consumer.clone(),
        runner_consumers,
        recorder_stop.clone(),
    ));
    workhook_core::metrics::spawn_admin(
        admin,
        metrics.registry.clone(),
        {
            let (shutdown, nats) = (shutdown.clone(), nats.clone());
            Arc::new(move || {
                !shutdown.is_cancelled()
                    && nats.connection_state() == async_nats::connection::State::Connected
            })
        },
        recorder_stop.clone(),
    );
    let recorder_task = tokio::spawn(recorder::run(
        pool.clone(),
        consumer.clone(),
        config.recorder_batch.max(1),
        metrics.recorded.clone(),
        recorder_stop.clone(),
    ));

    let delays_task = tokio::spawn(delays::run(
        pool.clone(),
        js.clone(),
        layout.clone(),
        recorder_stop.clone(),
    ));
    let scheduler_task = tokio::spawn(scheduler::run(
        pool.clone(),
        js.clone(),
        layout.clone(),
        recorder_stop.clone(),
    ));

    // Tasks queued while no registry ran, or on the subjects of a version that recorded every
    // task as it arrived (without the task id, so a lookup cannot find them), are recorded now.
    let catchup = Arc::new(catchup::CatchUp::new(
        pool.clone(),
        stream,
        layout.clone(),
        metrics.recorded.clone(),
    ));
    tokio::spawn({
        let catchup = catchup.clone();
        async move {
            if let Err(e) = catchup.run().await {
                tracing::warn!(error = %e, "catching up with the queue at start failed");
            }
        }
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RegistryServer<service::RegistryService>>()
        .await;
    let service = service::RegistryService {
        pool: pool.clone(),
        admin_token: config.admin_token.clone(),
        log_max_bytes: config.log_max_bytes,
        max_package_bytes: config.max_package_bytes,
        catchup: catchup.clone(),
        nats: nats.clone(),
        js: js.clone(),
        layout: layout.clone(),
        starts: {
            let pool = pool.clone();
            Coalescer::spawn(coalesce::BATCHES_IN_FLIGHT, move |calls| {
                let pool = pool.clone();
                async move { coalesce::start_batch(&pool, calls).await }
            })
        },
        completes: {
            let pool = pool.clone();
            Coalescer::spawn(coalesce::BATCHES_IN_FLIGHT, move |calls| {
                let pool = pool.clone();
                async move { coalesce::complete_batch(&pool, calls).await }
            })
        },
    };
    tracing::info!(addr = %listener.local_addr()?, stream = layout.stream(), "registry listening");
    let drain = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            health
                .set_not_serving::<RegistryServer<service::RegistryService>>()
                .await;
        }
    };
    let served = tonic::transport::Server::builder()
        .layer(metrics::GrpcTiming(metrics.clone()))
        .add_service(health_service)
        .add_service(
            RegistryServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), drain)
        .await;
    recorder_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), recorder_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), scheduler_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), delays_task).await;
    let _ = nats.drain().await;
    pool.close().await;
    served.context("serving gRPC")
}
