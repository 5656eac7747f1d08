use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = workhook_core::telemetry::init("workhook-ingress")?;
    let config = workhook_ingress::Config::parse();
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let admin = workhook_core::metrics::bind_admin(config.metrics_addr).await?;
    let ran = workhook_ingress::run(
        config,
        listener,
        admin,
        workhook_core::shutdown::on_signal(),
    )
    .await;
    telemetry.shutdown().await;
    ran
}
