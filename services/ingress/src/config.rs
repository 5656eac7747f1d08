use std::net::SocketAddr;

/// The ingress's configuration: every option is a flag and an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "workhook-ingress",
    version,
    about = "workhook's ingress: webhooks and the IronWorker v2 API"
)]
pub struct Config {
    /// Admin listener for `/metrics`, `/healthz` and `/readyz` (e.g. 0.0.0.0:9090); unset: none.
    #[arg(long, env = "WORKHOOK_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// HTTP listen address.
    #[arg(long, env = "WORKHOOK_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    #[command(flatten)]
    pub nats: workhook_core::stream::NatsConfig,

    /// The registry's gRPC URL.
    #[arg(
        long,
        env = "WORKHOOK_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub registry_url: String,

    /// How long a publish may wait for JetStream's acknowledgement before the webhook is
    /// answered 503 (the sender retries). Keep it under the senders' own timeouts.
    #[arg(long, env = "WORKHOOK_PUBLISH_TIMEOUT_MS", default_value_t = 2_000)]
    pub publish_timeout_ms: u64,

    /// Largest webhook body, in bytes (GitHub's maximum is 25 MiB); larger ones answer 413.
    #[arg(long, env = "WORKHOOK_MAX_BODY_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Webhook bodies larger than this travel through the JetStream object store instead of in
    /// the task message; it is also the limit of JSON requests. Keep it under the NATS server's
    /// max_payload (1 MiB by default) less room for headers.
    #[arg(long, env = "WORKHOOK_INLINE_PAYLOAD_BYTES", default_value_t = 512 * 1024)]
    pub inline_payload_bytes: usize,

    /// Largest code upload, in bytes.
    #[arg(long, env = "WORKHOOK_MAX_PACKAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_package_bytes: usize,

    /// How long tokens and code lookups are cached, in milliseconds.
    #[arg(long, env = "WORKHOOK_CACHE_TTL_MS", default_value_t = 5_000)]
    pub cache_ttl_ms: u64,

    /// Requests handled at once; past it, new ones are answered 503 at once (load shedding).
    #[arg(long, env = "WORKHOOK_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,

    /// Longest a request may take, in milliseconds (code uploads excepted); past it, 503. Keep it
    /// under the senders' own timeouts (Slack waits 3 s, GitHub 10 s). 0 disables it.
    #[arg(long, env = "WORKHOOK_REQUEST_TIMEOUT_MS", default_value_t = 2_500)]
    pub request_timeout_ms: u64,

    /// Tasks a project may queue per second (webhooks and the JSON API); 0 is unlimited. Over it,
    /// 429 with Retry-After.
    #[arg(long, env = "WORKHOOK_RATE_LIMIT", default_value_t = 0.0)]
    pub rate_limit: f64,

    /// The burst a project may queue above its rate (default: one second's worth, at least 1).
    #[arg(long, env = "WORKHOOK_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<f64>,

    /// How long in-flight requests may take to finish once shutdown starts, in seconds.
    #[arg(long, env = "WORKHOOK_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,
}
