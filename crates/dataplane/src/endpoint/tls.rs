//! rustls client configuration: system roots plus an optional extra CA.

use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The TLS configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsConfigError {
    /// The extra CA is not PEM or holds no certificate.
    #[error("the CA bundle holds no usable PEM certificate")]
    NoCertificate,
    /// A certificate in the extra CA was refused.
    #[error("the CA bundle has an invalid certificate: {0}")]
    InvalidCertificate(String),
    /// rustls refused the protocol configuration.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let result = rustls_native_certs::load_native_certs();
        for err in &result.errors {
            tracing::debug!(error = %err, "could not load some system root certificates");
        }
        result.certs
    })
}

/// Parses every certificate of a PEM bundle.
pub fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsConfigError::InvalidCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate);
    }
    Ok(certs)
}

/// A client configuration trusting the system roots and, when given, every
/// certificate of `extra_ca_pem`. Uses the `ring` provider explicitly, so it
/// does not depend on a process-wide default provider.
pub fn client_config(extra_ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(native_roots().iter().cloned());
    if let Some(pem) = extra_ca_pem {
        for cert in parse_pem_certificates(pem)? {
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::InvalidCertificate(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_ca_is_refused() {
        assert_eq!(
            parse_pem_certificates(b"not a pem"),
            Err(TlsConfigError::NoCertificate)
        );
        assert!(client_config(Some(b"nothing here")).is_err());
    }

    #[test]
    fn system_roots_alone_build() {
        assert!(client_config(None).is_ok());
    }
}
