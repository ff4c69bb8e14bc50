//! Every value of a proto enum that the gateway's text names exists: a
//! message that tells callers to send `CONSISTENCY_EVENTUAL`, or "consistency
//! EVENTUAL", when the API has no such value sends them nowhere. The enums
//! come from the compiled descriptors; the texts are the string literals
//! (messages, and doc comments) of `src/`, outside `src/store/` (SQL, whose
//! column names and keywords read like enum values: `severity FROM`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use prost::Message as _;
use prost_types::{DescriptorProto, EnumDescriptorProto};

/// Each enum's value prefix (`IMAGE_TAG_MUTABILITY`) and its values.
fn proto_enums() -> BTreeMap<String, Vec<String>> {
    fn collect(
        enums: &[EnumDescriptorProto],
        messages: &[DescriptorProto],
        into: &mut BTreeMap<String, Vec<String>>,
    ) {
        for e in enums {
            let values = e.value.iter().map(|v| v.name().to_owned()).collect();
            into.insert(upper_snake(e.name()), values);
        }
        for m in messages {
            collect(&m.enum_type, &m.nested_type, into);
        }
    }
    let set = prost_types::FileDescriptorSet::decode(ecr_gateway::server::FILE_DESCRIPTOR_SET)
        .expect("descriptors");
    let mut enums = BTreeMap::new();
    for file in set.file.iter().filter(|f| f.package() == "ecrgateway.v1") {
        collect(&file.enum_type, &file.message_type, &mut enums);
    }
    enums
}

/// `ImageTagMutability` → `IMAGE_TAG_MUTABILITY`.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if !path.ends_with("store") {
                rust_files(&path, into);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

fn string_literals(tokens: TokenStream, into: &mut Vec<String>) {
    for token in tokens {
        match token {
            TokenTree::Group(group) => string_literals(group.stream(), into),
            // The literal as written; escapes read as spaces (`\n`, a line continuation).
            TokenTree::Literal(literal) => {
                let text = literal.to_string();
                if text.ends_with('"') || text.ends_with('#') {
                    into.push(text.replace("\\\n", " ").replace("\\n", " ").replace("\\t", " "));
                }
            }
            _ => {}
        }
    }
}

/// The proto enums and the patterns that find their values in a text.
struct Enums {
    /// Value prefix → values.
    values: BTreeMap<String, Vec<String>>,
    /// An UPPER_SNAKE word.
    word: regex::Regex,
    /// Value prefix → "`enum name` VALUE" (`consistency EVENTUAL`).
    phrases: Vec<(String, regex::Regex)>,
}

impl Enums {
    fn load() -> Enums {
        let values = proto_enums();
        let phrases = values
            .keys()
            .map(|prefix| {
                let words = prefix.to_lowercase().replace('_', "[ _]");
                let phrase = format!(r#"(?i:\b{words})\s+[`'"]?([A-Z][A-Z0-9_]+)\b"#);
                (prefix.clone(), regex::Regex::new(&phrase).expect("regex"))
            })
            .collect();
        Enums {
            values,
            word: regex::Regex::new(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b").expect("regex"),
            phrases,
        }
    }
}

/// What `text` names that is not a value: `PREFIX_VALUE` words whose enum
/// lacks them, and "`enum name` VALUE" phrases (`consistency EVENTUAL`)
/// whose enum has neither `VALUE` nor `PREFIX_VALUE`.
fn unknown_values(text: &str, enums: &Enums) -> Vec<String> {
    let mut unknown = Vec::new();
    for found in enums.word.find_iter(text) {
        let found = found.as_str();
        let owner = enums
            .values
            .iter()
            .filter(|(prefix, _)| found.starts_with(&format!("{prefix}_")))
            .max_by_key(|(prefix, _)| prefix.len());
        if let Some((_, values)) = owner
            && !values.iter().any(|v| v == found)
        {
            unknown.push(found.to_owned());
        }
    }
    for (prefix, phrase) in &enums.phrases {
        let values = &enums.values[prefix];
        for captures in phrase.captures_iter(text) {
            let value = &captures[1];
            let prefixed = format!("{prefix}_{value}");
            if !values.iter().any(|v| v == value || *v == prefixed) {
                unknown.push(captures[0].to_owned());
            }
        }
    }
    unknown
}

#[test]
fn every_proto_enum_value_that_the_gateways_text_names_exists() {
    let enums = Enums::load();
    assert!(enums.values.contains_key("CONSISTENCY"), "{:?}", enums.values);
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 50, "{} files", files.len());

    let mut unknown = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("read");
        let tokens: TokenStream = source
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
        let mut literals = Vec::new();
        string_literals(tokens, &mut literals);
        for literal in literals {
            for value in unknown_values(&literal, &enums) {
                unknown.push(format!("{}: {value}", file.display()));
            }
        }
    }

    assert!(
        unknown.is_empty(),
        "these name proto enum values that do not exist (see proto/ecrgateway/v1):\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_check_catches_a_value_the_api_lacks_in_either_form() {
    let enums = Enums::load();

    let old = "Cached reads (consistency EVENTUAL) still answer";
    assert_eq!(unknown_values(old, &enums), vec!["consistency EVENTUAL"]);
    assert_eq!(
        unknown_values("send CONSISTENCY_EVENTUAL", &enums),
        vec!["CONSISTENCY_EVENTUAL"]
    );
    assert!(unknown_values("with consistency CONSISTENCY_CACHED", &enums).is_empty());
    assert!(unknown_values("image tag mutability IMMUTABLE", &enums).is_empty());
    assert!(unknown_values("a severity of CRITICAL or SEVERITY_HIGH", &enums).is_empty());
}
