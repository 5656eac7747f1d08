use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = workhook_core::telemetry::init("workhook-runner")?;
    let config = workhook_runner::Config::parse();
    let admin = workhook_core::metrics::bind_admin(config.metrics_addr).await?;
    let ran = workhook_runner::run(config, admin, workhook_core::shutdown::on_signal()).await;
    telemetry.shutdown().await;
    ran
}
