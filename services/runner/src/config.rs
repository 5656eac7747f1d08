use std::net::SocketAddr;
use std::path::PathBuf;

/// The runner's configuration: every option is a flag and an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "workhook-runner",
    version,
    about = "workhook's runner: runs workers for queued tasks"
)]
pub struct Config {
    /// Admin listener for `/metrics`, `/healthz` and `/readyz` (e.g. 0.0.0.0:9090); unset: none.
    #[arg(long, env = "WORKHOOK_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub nats: workhook_core::stream::NatsConfig,

    /// The registry's gRPC URL.
    #[arg(
        long,
        env = "WORKHOOK_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub registry_url: String,

    /// The API's URL as workers reach it; given to each worker as WORKHOOK_API_URL with a token
    /// scoped to its task (WORKHOOK_TASK_TOKEN), so it can report progress.
    #[arg(long, env = "WORKHOOK_API_URL")]
    pub api_url: Option<String>,

    /// Tasks this runner runs at once.
    #[arg(long, env = "WORKHOOK_RUNNER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// Where packages are cached and tasks get their directories.
    #[arg(long, env = "WORKHOOK_RUNNER_DIR", default_value_os_t = std::env::temp_dir().join("workhook-runner"))]
    pub dir: PathBuf,

    /// This runner's name in task records (default: host name and a random suffix).
    #[arg(long, env = "WORKHOOK_RUNNER_ID")]
    pub runner_id: Option<String>,

    /// Seconds a task stays with this runner without a renewal; renewed every third of it while
    /// the worker runs. A runner that dies loses its tasks to another after this long.
    #[arg(long, env = "WORKHOOK_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,

    /// A lower priority that has had no task taken for this many seconds gets the next free slot
    /// once, so priority 0 is never starved by a steady backlog of higher ones.
    #[arg(long, env = "WORKHOOK_PRIORITY_AGING_SECS", default_value_t = 30)]
    pub priority_aging_secs: u64,

    /// Seconds running tasks get to finish once shutdown starts; after that their workers are
    /// killed and the tasks handed back to the stream.
    #[arg(long, env = "WORKHOOK_DRAIN_SECS", default_value_t = 25)]
    pub drain_secs: u64,
}
