//! `[server.grpc_web]`: gRPC-Web for browser portals, and the CORS origins
//! allowed to call it (served by `web::BrowserLayer`).

use serde::{Deserialize, Serialize};

/// The `allowed_origins` entry that allows every origin.
pub const ANY_ORIGIN: &str = "*";

/// `[server.grpc_web]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcWebConfig {
    /// Serve gRPC-Web (HTTP/1.1 and HTTP/2) beside gRPC on the same listener.
    pub enabled: bool,
    /// Origins (`scheme://host[:port]`, exactly as browsers send them) whose
    /// pages may call the gateway; `["*"]` allows every origin. Empty: only
    /// callers that send no `Origin` (not browsers) may use gRPC-Web.
    pub allowed_origins: Vec<String>,
    /// Answer `Access-Control-Allow-Credentials: true`, so that pages may
    /// send cookies or TLS client certificates (`credentials: "include"`).
    pub allow_credentials: bool,
}

impl GrpcWebConfig {
    /// Whether every origin is allowed (`allowed_origins = ["*"]`).
    pub fn allows_any_origin(&self) -> bool {
        self.allowed_origins.iter().any(|origin| origin == ANY_ORIGIN)
    }

    /// Every problem of these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let key = format!("server.grpc_web.allowed_origins[{i}]");
            if origin == ANY_ORIGIN {
                if self.allowed_origins.len() > 1 {
                    problems.push(format!(
                        "{key}: `*` allows every origin; list no other origins beside it"
                    ));
                }
                if self.allow_credentials {
                    problems.push(format!(
                        "{key}: `*` cannot be combined with server.grpc_web.allow_credentials = true \
                         (browsers refuse credentials for any origin); list the portal's origins instead"
                    ));
                }
            } else if let Err(problem) = check_origin(origin) {
                problems.push(format!("{key}: `{origin}` {problem}"));
            } else if !seen.insert(origin.as_str()) {
                problems.push(format!("{key}: `{origin}` is listed twice"));
            }
        }
        problems
    }
}

/// Checks that `origin` is written as browsers send the `Origin` header
/// (compared byte for byte): `http` or `https`, `://`, a lowercase host, an
/// optional port other than the scheme's default, and nothing after it.
fn check_origin(origin: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. \"https://portal.example.com\" or \"http://localhost:3000\"";
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(format!("is not an origin: give scheme://host[:port], {EXAMPLE}"));
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return Err(format!("must start with http:// or https://, {EXAMPLE}")),
    };
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "is not an origin: give scheme://host[:port] with no path, trailing slash or user, {EXAMPLE}"
        ));
    }
    let (host, port) = split_host_port(authority);
    if host.is_empty() || host == "[]" {
        return Err(format!("has no host, {EXAMPLE}"));
    }
    if !host.is_ascii() {
        return Err("has a non-ASCII host: give its punycode (xn--) form, as browsers send it".into());
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("has capitals in its host: write it in lowercase, as browsers send it".into());
    }
    let host_chars_ok = if host.starts_with('[') {
        host.ends_with(']')
            && host[1..host.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        host.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !host_chars_ok {
        return Err(format!("has an invalid host, {EXAMPLE}"));
    }
    match port {
        None => Ok(()),
        Some(port) if port == default_port => Err(format!(
            "names {scheme}'s default port {port}, which browsers leave out: write `{scheme}://{host}`"
        )),
        Some(port) if port.parse::<u16>().is_ok_and(|p| p > 0) && !port.starts_with('0') => Ok(()),
        Some(port) => Err(format!("has an invalid port `{port}`: give 1 to 65535")),
    }
}

/// `host:port` → (`host`, `Some(port)`); keeps an IPv6 literal's brackets.
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => match authority[end + 1..].strip_prefix(':') {
                Some(port) => (&authority[..=end], Some(port)),
                None if end + 1 == authority.len() => (authority, None),
                None => (authority, Some("")),
            },
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(origins: &[&str], allow_credentials: bool) -> Vec<String> {
        GrpcWebConfig {
            enabled: true,
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_credentials,
        }
        .problems()
    }

    #[test]
    fn origins_as_browsers_send_them_are_accepted() {
        let good = [
            "https://portal.example.com",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "https://xn--bcher-kva.example",
            "http://[::1]:3000",
            "https://[2001:db8::1]",
        ];
        assert_eq!(problems(&good, true), Vec::<String>::new());
        assert_eq!(problems(&["*"], false), Vec::<String>::new());
    }

    #[test]
    fn each_malformed_origin_is_named_with_its_index_and_the_rule() {
        let cases = [
            ("portal.example.com", "scheme://host[:port]"),
            ("ftp://portal.example.com", "http:// or https://"),
            ("https://portal.example.com/", "no path, trailing slash"),
            ("https://portal.example.com/app", "no path"),
            ("https://user@portal.example.com", "user"),
            ("https://", "has no host"),
            ("https://Portal.example.com", "lowercase"),
            ("https://bücher.example", "punycode"),
            ("https://portal.example.com:443", "default port"),
            ("http://localhost:80", "default port"),
            ("http://localhost:99999", "invalid port"),
            ("http://localhost:", "invalid port"),
            ("http://local_host", "invalid host"),
            ("null", "scheme://host[:port]"),
        ];
        for (origin, rule) in cases {
            let found = problems(&[origin], false);
            assert_eq!(found.len(), 1, "{origin}: {found:?}");
            assert!(
                found[0].starts_with(&format!("server.grpc_web.allowed_origins[0]: `{origin}`")),
                "{found:?}"
            );
            assert!(found[0].contains(rule), "{origin}: {found:?}");
        }
    }

    #[test]
    fn a_wildcard_refuses_credentials_and_company() {
        let found = problems(&["*"], true);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("allow_credentials"), "{found:?}");
        let found = problems(&["https://a.example", "*"], false);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("server.grpc_web.allowed_origins[1]: `*` allows every origin"),
            "{found:?}"
        );
    }

    #[test]
    fn an_origin_listed_twice_is_named() {
        let found = problems(&["https://a.example", "https://a.example"], false);
        assert_eq!(
            found,
            vec!["server.grpc_web.allowed_origins[1]: `https://a.example` is listed twice".to_string()]
        );
    }
}
