//! Generates the gRPC code from `proto/` with a protoc that comes with the
//! build (protoc-bin-vendored), so no machine needs one installed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: a build cache
    // shared between clones at different paths may reuse the compiled script.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "policy.proto",
        "policy_service.proto",
        "failover_service.proto",
        "rollout_service.proto",
    ]
    .map(|f| root.join("meridian/v1").join(f));
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .file_descriptor_set_path(out.join("meridian_descriptor.bin"))
        .compile_protos(
            &files,
            &[root.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
