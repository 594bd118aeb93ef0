//! Compiles `proto/` with protox (pure Rust: no system `protoc`) and generates tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "build/bazel/remote/execution/v2/remote_execution.proto",
        "build/bazel/remote/asset/v1/remote_asset.proto",
        "build/bazel/semver/semver.proto",
        "google/bytestream/bytestream.proto",
        "google/longrunning/operations.proto",
        "google/rpc/status.proto",
        "google/rpc/code.proto",
        "google/rpc/error_details.proto",
        "google/devtools/remoteworkers/v1test2/bots.proto",
        "google/devtools/remoteworkers/v1test2/command.proto",
        "google/devtools/remoteworkers/v1test2/worker.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
