use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    workhook_core::telemetry::init_logging();
    let config = workhook_runner::Config::parse();
    let admin = workhook_core::metrics::bind_admin(config.metrics_addr).await?;
    workhook_runner::run(config, admin, workhook_core::shutdown::on_signal()).await
}
