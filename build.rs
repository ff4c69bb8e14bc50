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
    write_request_messages(&out_dir)?;
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

/// Writes `request_messages.rs`: `RequestMessage` for the request message of
/// every RPC, generated from the descriptors so that a new RPC needs no line
/// of its own for what the generic adapter (`api::rpc`) asks of it:
/// - `client_request_id`: its `request_id` where it has one (an idempotent mutation), else empty;
/// - `validate_only`: its `validate_only` where it has one (the call is then recorded as a read);
/// - `audit_parameters`: the audit record's `requestParameters`, every field in
///   ECR's parameter names where there is one (see [`audit_key`]), enums by
///   name, timestamps and durations in seconds, nested messages alike.
fn write_request_messages(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use prost::Message as _;
    let bytes = std::fs::read(out_dir.join("ecrgateway_descriptor.bin"))?;
    let set = prost_types::FileDescriptorSet::decode(bytes.as_slice())?;
    let files: Vec<_> = set
        .file
        .iter()
        .filter(|f| f.package() == "ecrgateway.v1")
        .collect();
    let messages: std::collections::BTreeMap<String, &prost_types::DescriptorProto> = files
        .iter()
        .flat_map(|f| f.message_type.iter())
        .map(|m| (format!(".ecrgateway.v1.{}", m.name()), m))
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
    // Nested messages get `AuditParameters` too, reached from the requests.
    let mut pending: Vec<String> = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    for input in inputs {
        let message = messages
            .get(input)
            .ok_or_else(|| format!("RPC input {input} is not a message of ecrgateway.v1"))?;
        let name = message.name();
        let field = |wanted: &str| {
            message.field.iter().any(|f| {
                f.name() == wanted
                    && f.label() != prost_types::field_descriptor_proto::Label::Repeated
                    && matches!(
                        f.r#type(),
                        prost_types::field_descriptor_proto::Type::String
                            | prost_types::field_descriptor_proto::Type::Bool
                    )
            })
        };
        let request_id = if field("request_id") {
            "&self.request_id"
        } else {
            "\"\""
        };
        let validate_only = if field("validate_only") {
            "self.validate_only"
        } else {
            "false"
        };
        code.push_str(&format!(
            "impl RequestMessage for crate::pb::{name} {{\n    \
             fn client_request_id(&self) -> &str {{\n        {request_id}\n    }}\n    \
             fn validate_only(&self) -> bool {{\n        {validate_only}\n    }}\n}}\n"
        ));
        pending.push(input.to_owned());
    }
    while let Some(type_name) = pending.pop() {
        if !done.insert(type_name.clone()) {
            continue;
        }
        let message = messages
            .get(&type_name)
            .ok_or_else(|| format!("{type_name} is not a message of ecrgateway.v1"))?;
        code.push_str(&audit_parameters_impl(message, &mut pending)?);
    }
    std::fs::write(out_dir.join("request_messages.rs"), code)?;
    Ok(())
}

/// `impl AuditParameters` for one message: a `json!` object of every field.
fn audit_parameters_impl(
    message: &prost_types::DescriptorProto,
    nested: &mut Vec<String>,
) -> Result<String, Box<dyn std::error::Error>> {
    use prost_types::field_descriptor_proto::{Label, Type};
    let name = message.name();
    let mut entries = Vec::new();
    for field in &message.field {
        let rust = rust_field(field.name());
        let repeated = field.label() == Label::Repeated;
        let key = audit_key(name, field.name(), field.r#type(), field.type_name(), repeated);
        let value = match (field.r#type(), field.type_name()) {
            (Type::Message, ".google.protobuf.Timestamp") if !repeated => {
                format!("self.{rust}.as_ref().map(|t| t.seconds)")
            }
            (Type::Message, ".google.protobuf.Duration") if !repeated => {
                format!("self.{rust}.as_ref().map(|d| d.seconds)")
            }
            (Type::Message, ".google.protobuf.FieldMask") if !repeated => {
                format!("self.{rust}.as_ref().map(|m| &m.paths)")
            }
            (Type::Message, type_name)
                if type_name.starts_with(".ecrgateway.v1.") && is_map(message, type_name) =>
            {
                format!("&self.{rust}")
            }
            (Type::Message, type_name) if type_name.starts_with(".ecrgateway.v1.") => {
                nested.push(type_name.to_owned());
                if repeated {
                    format!("self.{rust}.iter().map(AuditParameters::audit_parameters).collect::<Vec<_>>()")
                } else {
                    format!("self.{rust}.as_ref().map(AuditParameters::audit_parameters)")
                }
            }
            (Type::Enum, type_name) if !repeated => {
                let rust_type = type_name
                    .strip_prefix(".ecrgateway.v1.")
                    .filter(|t| !t.contains('.'))
                    .ok_or_else(|| format!("{name}.{}: enum {type_name} is not top-level", field.name()))?;
                format!(
                    "enum_name(crate::pb::{rust_type}::try_from(self.{rust}).map(|e| e.as_str_name()), self.{rust})"
                )
            }
            (Type::Enum, type_name) => {
                let rust_type = type_name
                    .strip_prefix(".ecrgateway.v1.")
                    .filter(|t| !t.contains('.'))
                    .ok_or_else(|| format!("{name}.{}: enum {type_name} is not top-level", field.name()))?;
                format!(
                    "self.{rust}.iter().map(|v| enum_name(crate::pb::{rust_type}::try_from(*v).map(|e| e.as_str_name()), *v)).collect::<Vec<_>>()"
                )
            }
            (Type::Message | Type::Group, type_name) => {
                return Err(format!("{name}.{}: no audit form for {type_name}", field.name()).into());
            }
            (Type::Bytes, _) => {
                return Err(format!("{name}.{}: bytes have no audit form", field.name()).into());
            }
            _ => format!("&self.{rust}"),
        };
        entries.push(format!("        \"{key}\": {value},\n"));
    }
    Ok(format!(
        "impl AuditParameters for crate::pb::{name} {{\n    \
         fn audit_parameters(&self) -> serde_json::Value {{\n        \
         serde_json::json!({{\n{}        }})\n    }}\n}}\n",
        entries.concat()
    ))
}

/// Whether `type_name` is one of `message`'s map entry types.
fn is_map(message: &prost_types::DescriptorProto, type_name: &str) -> bool {
    message.nested_type.iter().any(|n| {
        n.options.as_ref().and_then(|o| o.map_entry).unwrap_or(false)
            && type_name.ends_with(&format!(".{}.{}", message.name(), n.name()))
    })
}

/// A field's name in the generated Rust (`type` is a keyword).
fn rust_field(name: &str) -> String {
    match name {
        "type" => "r#type".to_owned(),
        other => other.to_owned(),
    }
}

/// The audit key of a field: ECR's parameter name where there is one
/// (`repositoryName`, `imageTag`, `imageDigest`, `imageTags`,
/// `imageDigests`, `lifecyclePolicyText`), an object's id as
/// `<object>Id` (`GetCleanupRunRequest.id` → `cleanupRunId`), durations
/// as `<name>Seconds`, else the field's lowerCamelCase JSON name.
fn audit_key(
    message: &str,
    field: &str,
    kind: prost_types::field_descriptor_proto::Type,
    type_name: &str,
    repeated: bool,
) -> String {
    use prost_types::field_descriptor_proto::Type;
    let string = kind == Type::String;
    match field {
        "repository" if string => "repositoryName".into(),
        "target_repository" if string => "targetRepositoryName".into(),
        "tag" if string => "imageTag".into(),
        "target_tag" if string => "targetImageTag".into(),
        "digest" if string => "imageDigest".into(),
        "tags" if string && repeated => "imageTags".into(),
        "digests" if string && repeated => "imageDigests".into(),
        "policy_text" if string => "lifecyclePolicyText".into(),
        "id" if string => {
            // {Verb}{Object}Request → object.
            let object = message.strip_suffix("Request").unwrap_or(message);
            let verb_end = object[1..]
                .find(|c: char| c.is_ascii_uppercase())
                .map_or(0, |i| i + 1);
            let object = &object[verb_end..];
            format!("{}{}Id", object[..1].to_ascii_lowercase(), &object[1..])
        }
        _ if type_name == ".google.protobuf.Duration" => format!("{}Seconds", camel(field)),
        _ => camel(field),
    }
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
