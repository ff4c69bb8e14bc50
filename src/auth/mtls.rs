//! mTLS: the client's certificate chain, verified against `auth.mtls.ca_file`.
//!
//! The TLS handshake asks for a certificate (optionally) and proves that the
//! client holds the key of whatever certificate it sent, but accepts any
//! chain: a certificate from another CA must reach the caller as gRPC
//! UNAUTHENTICATED with a reason, not as a handshake failure it cannot read.
//! The identity layer then verifies the chain with the same WebPKI verifier
//! ([`MtlsAuthenticator::identify`]).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Caller, MissingIdentity};
use crate::config::MtlsConfig;
use crate::domain::Identity;

/// Longest principal accepted, in bytes (as for every mode).
const MAX_PRINCIPAL_BYTES: usize = 256;

/// Verifies client certificates and reads the identity they carry.
#[derive(Debug)]
pub struct MtlsAuthenticator {
    verifier: Arc<dyn ClientCertVerifier>,
    trust_domains: Vec<String>,
}

impl MtlsAuthenticator {
    /// Reads the CA bundle; problems name `auth.mtls.ca_file`.
    pub fn from_config(config: &MtlsConfig) -> Result<MtlsAuthenticator, Vec<String>> {
        let key = "auth.mtls.ca_file";
        let path = config.ca_file.display();
        let cas = CertificateDer::pem_file_iter(&config.ca_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| vec![format!("{key}: cannot read PEM certificates from {path}: {e}")])?;
        let mut roots = RootCertStore::empty();
        for (i, ca) in cas.into_iter().enumerate() {
            roots.add(ca).map_err(|e| {
                vec![format!(
                    "{key}: certificate {} in {path} is not a usable CA: {e}",
                    i + 1
                )]
            })?;
        }
        if roots.is_empty() {
            return Err(vec![format!("{key}: {path} holds no PEM certificate")]);
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| vec![format!("{key}: {e}")])?;
        Ok(MtlsAuthenticator {
            verifier,
            trust_domains: config.trust_domains.clone(),
        })
    }

    /// The verifier the TLS handshake uses: asks for a certificate, proves key
    /// possession, accepts the chain (judged per request by [`Self::identify`]).
    pub fn handshake_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(HandshakeVerifier {
            inner: self.verifier.clone(),
        })
    }

    /// The caller a client certificate chain (leaf first) proves.
    pub fn identify(&self, chain: &[CertificateDer<'static>]) -> Result<Caller, MissingIdentity> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(refuse("the TLS connection carries no client certificate"));
        };
        if let Err(error) = self
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            return Err(refuse(&chain_refusal(&error)));
        }
        let principal = principal_of(leaf, &self.trust_domains)?;
        Ok(Caller {
            identity: Identity {
                principal,
                principal_type: "Service".into(),
                groups: Vec::new(),
                auth_method: "mtls".into(),
            },
        })
    }
}

fn refuse(reason: &str) -> MissingIdentity {
    MissingIdentity {
        reason: reason.to_owned(),
    }
}

fn chain_refusal(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "client certificate expired".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "client certificate is not valid yet".into(),
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            "client certificate is revoked".into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => "client certificate is not for client authentication (extended key usage)".into(),
        _ => "client certificate is not signed by a CA in auth.mtls.ca_file".into(),
    }
}

/// The first `spiffe://` URI SAN (its trust domain checked when configured),
/// else the subject's common name.
fn principal_of(leaf: &CertificateDer<'_>, trust_domains: &[String]) -> Result<String, MissingIdentity> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|_| refuse("client certificate cannot be parsed"))?;
    let spiffe = cert.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
            _ => None,
        })
    });
    let principal = match spiffe {
        Some(id) => {
            check_trust_domain(&id, trust_domains)?;
            id
        }
        None => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                refuse("client certificate has neither a spiffe:// URI SAN nor a subject common name")
            })?,
    };
    if principal.is_empty() || principal.len() > MAX_PRINCIPAL_BYTES {
        return Err(refuse(&format!(
            "client certificate identity must be 1-{MAX_PRINCIPAL_BYTES} bytes"
        )));
    }
    Ok(principal)
}

fn check_trust_domain(spiffe_id: &str, trust_domains: &[String]) -> Result<(), MissingIdentity> {
    let rest = &spiffe_id["spiffe://".len()..];
    let domain = rest.split('/').next().unwrap_or_default();
    if domain.is_empty() {
        return Err(refuse("client certificate's SPIFFE id has no trust domain"));
    }
    if trust_domains.is_empty() || trust_domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
        Ok(())
    } else {
        Err(refuse(&format!(
            "client certificate's SPIFFE trust domain `{domain}` is not one of auth.mtls.trust_domains"
        )))
    }
}

/// Asks for a client certificate without requiring one, delegates the proof
/// of key possession to WebPKI, and leaves the chain to the identity layer.
#[derive(Debug)]
struct HandshakeVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for HandshakeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: a client holding a certificate from another CA still sends it,
    // and hears why it is refused.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_id_outside_the_trust_domains_is_refused() {
        let domains = vec!["prod.example.com".to_string()];
        assert!(check_trust_domain("spiffe://prod.example.com/deploy", &domains).is_ok());
        let error = check_trust_domain("spiffe://evil.example.com/deploy", &domains).expect_err("refused");
        assert!(error.reason.contains("evil.example.com"), "{}", error.reason);
        assert!(check_trust_domain("spiffe://anything/x", &[]).is_ok());
        assert!(check_trust_domain("spiffe:///x", &[]).is_err());
    }

    #[test]
    fn a_ca_file_that_is_not_pem_names_the_key() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), "not a certificate").expect("write");
        let problems = MtlsAuthenticator::from_config(&MtlsConfig {
            ca_file: file.path().to_path_buf(),
            trust_domains: Vec::new(),
        })
        .expect_err("refused");
        assert!(problems[0].starts_with("auth.mtls.ca_file:"), "{problems:?}");
    }
}
