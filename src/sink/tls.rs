//! The TLS client side of a broker connection from PEM files: which CAs to trust and which client
//! certificate to present. Errors name the config key at fault (`ca_file`, `cert_file`,
//! `key_file`), never a key's content.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A rustls client configuration: only the CAs of `ca_file` are trusted when it is set (else the
/// system's roots), and the certificate chain of `cert_file` with the key of `key_file` is
/// presented when both are set.
pub fn client_config(
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<rustls::ClientConfig, (&'static str, String)> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca_file) => {
            let pem = read("ca_file", ca_file)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|_| {
                    (
                        "ca_file",
                        format!("{} is not a PEM certificate file", ca_file.display()),
                    )
                })?;
                roots
                    .add(cert)
                    .map_err(|e| ("ca_file", format!("{}: {e}", ca_file.display())))?;
            }
            if roots.is_empty() {
                return Err(("ca_file", format!("{} holds no certificate", ca_file.display())));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs()
                .map_err(|e| ("ca_file", format!("cannot load the system's CA certificates: {e}")))?;
            roots.add_parsable_certificates(native);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca_file", format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => {
            let pem = read("cert_file", cert_file)?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    (
                        "cert_file",
                        format!("{} is not a PEM certificate chain", cert_file.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(("cert_file", format!("{} holds no certificate", cert_file.display())));
            }
            let key = PrivateKeyDer::from_pem_slice(&read("key_file", key_file)?)
                .map_err(|_| ("key_file", format!("{} is not a PEM private key", key_file.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ("key_file", format!("the key does not fit the certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, (&'static str, String)> {
    std::fs::read(path).map_err(|e| {
        (
            key,
            format!("cannot read {}: {}", path.display(), crate::fields::io_reason(&e)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::client_config;

    #[test]
    fn names_the_key_at_fault() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        let err = |r: Result<rustls::ClientConfig, (&'static str, String)>| r.err().map(|(k, _)| k);
        assert_eq!(err(client_config(Some(&missing), None, None)), Some("ca_file"));
        assert_eq!(err(client_config(Some(&junk), None, None)), Some("ca_file"));
        assert_eq!(err(client_config(None, Some(&junk), Some(&missing))), Some("cert_file"));
        assert!(client_config(None, None, None).is_ok(), "the system's roots suffice");
    }
}
