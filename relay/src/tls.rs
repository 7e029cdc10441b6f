//! TLS on the main listener (`RELAY_TLS_CERT`, `RELAY_TLS_KEY`), for
//! deployments without a TLS-terminating load balancer in front.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Reads a PEM certificate chain and its private key into a server config.
///
/// # Errors
/// A sentence naming the file and what is wrong with it.
pub fn server_config(cert_path: &str, key_path: &str) -> anyhow::Result<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| anyhow::anyhow!("cannot read RELAY_TLS_CERT {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("RELAY_TLS_CERT {cert_path} is not valid PEM: {e}"))?;
    if chain.is_empty() {
        anyhow::bail!("RELAY_TLS_CERT {cert_path} holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        anyhow::anyhow!("cannot read a private key from RELAY_TLS_KEY {key_path}: {e}")
    })?;
    // ring is the provider the rest of the build uses (the Redis client's TLS).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            anyhow::anyhow!("RELAY_TLS_CERT and RELAY_TLS_KEY do not make a usable pair: {e}")
        })?;
    Ok(config)
}
