//! Optional TLS on the webhook port: PEM certificate and key, swapped in place when the files
//! change so that a renewed certificate needs no restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key cannot be served. Names files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {}", .path.display(), crate::fields::io_reason(.source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a PEM certificate chain", .0.display())]
    NotCertificates(PathBuf),
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} is not a PEM private key", .0.display())]
    NotKey(PathBuf),
    #[error("the key in {} is of an unsupported type", .0.display())]
    UnsupportedKey(PathBuf),
    #[error("the key in {} does not match the certificate in {}", .key.display(), .cert.display())]
    Mismatch { key: PathBuf, cert: PathBuf },
    #[error("TLS setup failed: {0}")]
    Setup(#[source] rustls::Error),
}

/// Reads a PEM certificate chain and private key into a key rustls can serve.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
    certified_key(&cert_pem, &key_pem, cert_file, key_file)
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok((read(cert_file)?, read(key_file)?))
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NotCertificates(cert_file.to_path_buf()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NotKey(key_file.to_path_buf()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| TlsError::UnsupportedKey(key_file.to_path_buf()))?;
    let key = CertifiedKey::new(certs, signing_key);
    // A renewal caught between writing the certificate and the key must not be served.
    key.keys_match().map_err(|_| TlsError::Mismatch {
        key: key_file.to_path_buf(),
        cert: cert_file.to_path_buf(),
    })?;
    Ok(Arc::new(key))
}

/// Serves the current certificate; [`ReloadingCert::reload_if_changed`] swaps in a new one.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The file contents last loaded, to notice changes (Kubernetes swaps files through symlinks,
    /// so timestamps alone are not reliable).
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
        let key = certified_key(&cert_pem, &key_pem, cert_file, key_file)?;
        Ok(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: ArcSwap::new(key),
            loaded: Mutex::new((cert_pem, key_pem)),
        })
    }

    /// Re-reads the files; swaps the certificate when they changed and are valid. Returns whether
    /// it swapped. An invalid new pair keeps the old certificate and is reported as an error.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_file, &self.key_file)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 == cert_pem && loaded.1 == key_pem {
            return Ok(false);
        }
        let key = certified_key(&cert_pem, &key_pem, &self.cert_file, &self.key_file)?;
        self.current.store(key);
        *loaded = (cert_pem, key_pem);
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A TLS acceptor (TLS 1.2 and 1.3, HTTP/1.1) serving the resolver's current certificate.
pub fn acceptor(resolver: Arc<ReloadingCert>) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
