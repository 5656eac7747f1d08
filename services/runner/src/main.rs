use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    workhook_core::telemetry::init_logging();
    let config = workhook_runner::Config::parse();
    workhook_runner::run(config, workhook_core::shutdown::on_signal()).await
}
