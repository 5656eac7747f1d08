//! Compiles the registry's contract with protox (pure Rust), so a fresh machine needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "workhook/registry/v1/registry.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    tonic_prost_build::configure()
        .bytes(".workhook.registry.v1")
        .compile_fds(fds)?;
    Ok(())
}
