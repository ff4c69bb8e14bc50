//! Compiles `proto/ecrgateway/v1/*.proto` with the vendored protoc and writes
//! a file descriptor set that the server exposes through gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos: Vec<PathBuf> = std::fs::read_dir("proto/ecrgateway/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let mut protos: Vec<PathBuf> = protos
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    protos.sort();

    tonic_prost_build::configure()
        // Deterministic encoding: request hashes (idempotency) must not depend on map order.
        .btree_map(".")
        .file_descriptor_set_path(out_dir.join("ecrgateway_descriptor.bin"))
        .compile_protos(&protos, &[PathBuf::from("proto")])?;
    // The directory itself (a new .proto file) and every file in it.
    println!("cargo:rerun-if-changed=proto/ecrgateway/v1");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    // `sqlx::migrate!` embeds migrations/ at compile time; without this a new
    // migration file would not rebuild the crate, and the binary would not have it.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
