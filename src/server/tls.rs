//! HTTPS: the listeners' certificate and key (rustls, aws-lc-rs), reloaded on SIGHUP, and the
//! admin listener's client-certificate authentication. A reload with files that do not load is
//! refused and the certificate in use kept.

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;

/// A listener's TLS settings, swapped whole on a reload.
pub type Tls = Arc<ArcSwap<ServerConfig>>;

/// What a listener's TLS is made of: the files, read again on SIGHUP.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are asked for and must chain to this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files into a server config (HTTP/1.1 over TLS 1.2 or 1.3).
    pub fn load(&self) -> Result<ServerConfig, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("server.tls_cert_file: {}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("server.tls_cert_file: {}: no PEM certificate", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("server.tls_key_file: {}: no PEM private key ({e})", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("admin.client_ca_file: {}: {e}", ca.display()))?
                {
                    let c = c.map_err(|e| format!("admin.client_ca_file: {}: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("admin.client_ca_file: {}: {e}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("admin.client_ca_file: {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_single_cert(certs, key).map_err(|e| format!("server.tls_cert_file / tls_key_file: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The listener's TLS, reloaded from the files on every SIGHUP from now on.
    pub fn serve(self) -> Result<Tls, String> {
        let tls: Tls = Arc::new(ArcSwap::from_pointee(self.load()?));
        let swap = tls.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match self.load() {
                    Ok(c) => {
                        swap.store(Arc::new(c));
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "TLS reload refused; the certificate in use is kept"),
                }
            }
        });
        Ok(tls)
    }
}

/// The TLS files of the public and the admin listener, as the config says.
pub fn files(config: &crate::config::Config) -> (Option<TlsFiles>, Option<TlsFiles>) {
    let Some((cert, key)) = config.server.tls.clone() else { return (None, None) };
    let public = TlsFiles { cert, key, client_ca: None };
    let admin = config.admin_listen.map(|_| TlsFiles { client_ca: config.admin_client_ca.clone(), ..public.clone() });
    (Some(public), admin)
}

/// Every problem loading the config's TLS files (for `check` and `serve`).
pub fn check(config: &crate::config::Config) -> Vec<String> {
    let (public, admin) = files(config);
    let mut errs: Vec<String> = public.iter().filter_map(|f| f.load().err()).collect();
    if config.admin_client_ca.is_some() {
        errs.extend(admin.iter().filter_map(|f| f.load().err()).filter(|e| e.starts_with("admin.")));
    }
    errs
}
