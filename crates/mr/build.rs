//! Compiles `proto/mr.proto` with the pure-Rust `protox` (no system `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mr.proto");
    let fds = protox::compile(["proto/mr.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
