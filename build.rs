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
    write_client_request_ids(&out_dir)?;
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

/// Writes `client_request_ids.rs`: `ClientRequestId` for the request message
/// of every RPC, returning its `request_id` where it has one (an idempotent
/// mutation) and nothing otherwise. Generated from the descriptors so that
/// a new RPC's audit record carries the caller's key without a line of its own.
fn write_client_request_ids(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::Type;
    let bytes = std::fs::read(out_dir.join("ecrgateway_descriptor.bin"))?;
    let set = prost_types::FileDescriptorSet::decode(bytes.as_slice())?;
    let files: Vec<_> = set
        .file
        .iter()
        .filter(|f| f.package() == "ecrgateway.v1")
        .collect();
    let mut inputs: Vec<&str> = files
        .iter()
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter())
        .map(|m| m.input_type())
        .collect();
    inputs.sort_unstable();
    inputs.dedup();
    let mut code = String::new();
    for input in inputs {
        let name = input
            .strip_prefix(".ecrgateway.v1.")
            .ok_or_else(|| format!("RPC input {input} is not a message of ecrgateway.v1"))?;
        let message = files
            .iter()
            .flat_map(|f| f.message_type.iter())
            .find(|m| m.name() == name)
            .ok_or_else(|| format!("no message {name}"))?;
        let has_request_id = message
            .field
            .iter()
            .any(|f| f.name() == "request_id" && f.r#type() == Type::String);
        let body = if has_request_id {
            "&self.request_id"
        } else {
            "\"\""
        };
        code.push_str(&format!(
            "impl ClientRequestId for crate::pb::{name} {{\n    fn client_request_id(&self) -> &str {{\n        {body}\n    }}\n}}\n"
        ));
    }
    std::fs::write(out_dir.join("client_request_ids.rs"), code)?;
    Ok(())
}
