//! Serving TLS (`[server.tls]`): the server's certificate and key, the rustls
//! configuration (aws-lc-rs provider; ALPN h2, and http/1.1 too with gRPC-Web;
//! optional client certificates), and the stream of accepted connections tonic
//! serves. Handshakes run each in a task of its own with a timeout, so a slow
//! client never holds up the accept loop; the IO is tokio-rustls' stream, whose
//! tonic `Connected` puts the remote address and the client's certificate chain
//! into every request.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ServerTlsConfig;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 1024;
/// Handshaken connections waiting for tonic to pick them up.
const READY_QUEUE: usize = 128;

/// The process's rustls provider: aws-lc-rs (ring is also linked, through sqlx,
/// so the provider is always named rather than taken as the default).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificate chain the server presents, and its private key.
pub type ServerIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Reads `[server.tls]`: the certificate chain and its key; each problem names its key.
pub fn load_server_identity(tls: &ServerTlsConfig) -> Result<ServerIdentity, Vec<String>> {
    let mut problems = Vec::new();
    let certs = match CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
    {
        Ok(certs) if certs.is_empty() => {
            problems.push(format!(
                "server.tls.cert_file: {} holds no PEM certificate",
                tls.cert_file.display()
            ));
            Vec::new()
        }
        Ok(certs) => certs,
        Err(error) => {
            problems.push(format!(
                "server.tls.cert_file: cannot read PEM certificates from {}: {error}",
                tls.cert_file.display()
            ));
            Vec::new()
        }
    };
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|error| {
            problems.push(format!(
                "server.tls.key_file: cannot read a PEM private key from {}: {error}",
                tls.key_file.display()
            ))
        })
        .ok();
    match key {
        Some(key) if problems.is_empty() => Ok((certs, key)),
        _ => Err(problems),
    }
}

/// The rustls server configuration: the server's identity, ALPN (h2, and
/// http/1.1 when `http1` — gRPC-Web, so a browser may use either) and, with
/// mTLS, the client-certificate verifier.
pub fn server_config(
    tls: &ServerTlsConfig,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    http1: bool,
) -> Result<rustls::ServerConfig, Vec<String>> {
    server_config_for(load_server_identity(tls)?, client_verifier, http1)
}

/// [`server_config`] for an identity already read (`server::parts` reads it once).
pub fn server_config_for(
    (certs, key): ServerIdentity,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    http1: bool,
) -> Result<rustls::ServerConfig, Vec<String>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![format!("server.tls: {e}")])?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        vec![format!(
            "server.tls.key_file: does not fit server.tls.cert_file: {e}"
        )]
    })?;
    config.alpn_protocols = if http1 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec()]
    };
    Ok(config)
}

/// Accepts TCP connections (TCP_NODELAY, keepalive) and hands on those whose
/// TLS handshake finished in time. Ends when tonic drops the stream.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (ready, receiver) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, acceptor, ready));
    ReceiverStream::new(receiver)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => permit,
            _ = ready.closed() => return,
        };
        let Ok(permit) = permit else {
            return; // the semaphore is never closed
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = ready.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A response written in several pieces must not wait for the caller's delayed ACK.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send(Ok(tls)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_offers_http1_beside_h2_only_for_grpc_web() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let tls = ServerTlsConfig {
            cert_file: dir.path().join("server.pem"),
            key_file: dir.path().join("server.key"),
        };
        std::fs::write(&tls.cert_file, cert.pem()).expect("write");
        std::fs::write(&tls.key_file, key.serialize_pem()).expect("write");

        let grpc_only = server_config(&tls, None, false).expect("config");
        let with_web = server_config(&tls, None, true).expect("config");

        assert_eq!(grpc_only.alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(with_web.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn unreadable_certificate_and_key_files_name_their_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let problems = load_server_identity(&ServerTlsConfig {
            cert_file: empty,
            key_file: dir.path().join("missing.key"),
        })
        .expect_err("refused");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("server.tls.cert_file:"), "{problems:?}");
        assert!(problems[0].contains("holds no PEM certificate"), "{problems:?}");
        assert!(problems[1].starts_with("server.tls.key_file:"), "{problems:?}");
    }
}
