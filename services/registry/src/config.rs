use std::net::SocketAddr;

/// The registry's configuration: every option is a flag and an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "workhook-registry",
    version,
    about = "workhook's registry: gRPC on Postgres"
)]
pub struct Config {
    /// Admin listener for `/metrics`, `/healthz` and `/readyz` (e.g. 0.0.0.0:9090); unset: none.
    #[arg(long, env = "WORKHOOK_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    #[command(flatten)]
    pub nats: workhook_core::stream::NatsConfig,

    /// gRPC listen address.
    #[arg(long, env = "WORKHOOK_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Token that the admin calls (project creation) must present. Unset: admin calls are refused.
    #[arg(long, env = "WORKHOOK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Most bytes of log kept per task; the rest is dropped and the log marked truncated.
    #[arg(long, env = "WORKHOOK_LOG_MAX_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub log_max_bytes: i64,

    /// Largest code package accepted, in bytes.
    #[arg(long, env = "WORKHOOK_MAX_PACKAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_package_bytes: usize,

    /// Postgres connections in the pool.
    #[arg(long, env = "WORKHOOK_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Most queued tasks the recorder writes in one INSERT.
    #[arg(long, env = "WORKHOOK_RECORDER_BATCH", default_value_t = 500)]
    pub recorder_batch: usize,
}
