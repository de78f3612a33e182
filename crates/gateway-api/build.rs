//! Generates the `AgentApi` gRPC service (server and client) from
//! proto/nexus/v1/api.proto with protox (pure Rust, no `protoc`). The messages
//! themselves are nexus-proto's: every `.nexus.v1` type is an extern path.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let api = root.join("nexus/v1/api.proto");
    println!("cargo:rerun-if-changed={}", root.join("nexus/v1").display());
    println!("cargo:rerun-if-changed={}", api.display());
    let fds = protox::compile([&api], [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The client's `connect` needs tonic's channel; tests build their own `Channel`.
        .build_transport(false)
        .extern_path(".nexus.v1", "::nexus_proto::v1")
        .compile_fds(fds)?;
    Ok(())
}
