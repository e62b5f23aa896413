//! HTTPS: the server's certificate chain and key (`--tls-cert`,
//! `--tls-key`), read with rustls; TLS 1.2 and 1.3 only, ALPN `h2`
//! (then HTTP/2) or `http/1.1`. Also the client side of guests' outgoing
//! https requests, with the authorities they trust ([`outbound_client`]).
//!
//! The pair is checked at start (each file readable, a certificate and a
//! private key in it, the key the certificate's), and every error names
//! the file and the flag. While the server runs, [`Certificates`] reloads
//! the pair when either file changes (see [`crate::watch`]) or on SIGHUP:
//! a pair that loads is used for the next handshake, one that does not is
//! reported and the running pair kept.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ServerConfig};
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::watch::Reload;

/// The protocols the server offers in ALPN, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The chain, PEM, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key, PEM: PKCS#8, or PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error(
        "--tls-cert {} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block): \
         give the certificate chain, the server's own certificate first",
        .0.display()
    )]
    NoCertificate(PathBuf),
    /// The `--outbound-ca` file holds no certificate.
    #[error(
        "--outbound-ca {} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block): \
         give the certificates of the authorities that issued the services' certificates",
        .0.display()
    )]
    NoAuthority(PathBuf),
    /// rustls refused a certificate of `--outbound-ca` as a trust anchor.
    #[error("--outbound-ca {} holds a certificate that cannot be trusted: {reason}", path.display())]
    Authority {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The key file holds no private key.
    #[error(
        "--tls-key {} holds no PEM private key (`-----BEGIN PRIVATE KEY-----`, or an RSA or EC \
         key): give the key the certificate was issued for",
        .0.display()
    )]
    NoKey(PathBuf),
    /// A file's PEM could not be read.
    #[error("{flag} {} is not valid PEM: {reason}", path.display())]
    Pem {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// rustls refused the pair: the key is not the certificate's, or one
    /// of them is not usable.
    #[error(
        "--tls-key {} and --tls-cert {} do not make a usable pair: {reason}",
        key.display(),
        cert.display()
    )]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

impl TlsFiles {
    /// Reads and checks the pair: a server configuration for rustls.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = read_certificates(&self.cert, "--tls-cert")?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.clone()));
        }
        let key = read_key(&self.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = |reason: String| TlsError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason,
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| pair(err.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|err| pair(describe(&err)))?;
        config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// What rustls's refusal of a pair means, in words.
fn describe(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InconsistentKeys(_) => {
            "the private key is not the one the certificate was issued for".to_owned()
        }
        other => other.to_string(),
    }
}

/// The certificates in the PEM file `path`, which `flag` names.
fn read_certificates(
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            flag,
            path: path.to_owned(),
            reason: err.to_string(),
        })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let flag = "--tls-key";
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(path.to_owned()),
        other => TlsError::Pem {
            flag,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// The TLS client configuration of guests' outgoing https requests: TLS
/// 1.2 and 1.3, ALPN `http/1.1`, no client certificate, trusting the
/// webpki roots and the authorities in `extra_roots` (`--outbound-ca`).
pub fn outbound_client(extra_roots: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    if let Some(path) = extra_roots {
        let authorities = read_certificates(path, "--outbound-ca")?;
        if authorities.is_empty() {
            return Err(TlsError::NoAuthority(path.to_owned()));
        }
        for authority in authorities {
            roots.add(authority).map_err(|err| TlsError::Authority {
                path: path.to_owned(),
                reason: err.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The pair in use, replaced by each reload that loads.
pub struct Certificates {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    metrics: Arc<Metrics>,
}

impl Certificates {
    /// The pair `files` names, checked now.
    pub fn load(files: TlsFiles, metrics: Arc<Metrics>) -> Result<Certificates, TlsError> {
        let config = files.load()?;
        Ok(Certificates {
            files,
            current: RwLock::new(config),
            metrics,
        })
    }

    /// The acceptor for the next handshake, with the pair in use now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again: a pair that loads is used from the next
    /// handshake on; one that does not is reported, and the running pair
    /// kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = self.files.load();
        self.metrics.tls_reload(loaded.is_ok());
        let config = loaded?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(())
    }

    /// [`Certificates::reload`], logged.
    pub fn reload_and_log(&self) {
        let (cert, key) = (self.files.cert.display(), self.files.key.display());
        match self.reload() {
            Ok(()) => info!(%cert, %key, "loaded a new TLS certificate"),
            Err(err) => error!(cause = %err, "kept the running TLS certificate"),
        }
    }
}

impl Reload for Certificates {
    fn files(&self) -> Vec<PathBuf> {
        vec![self.files.cert.clone(), self.files.key.clone()]
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move { self.reload_and_log() })
    }
}
