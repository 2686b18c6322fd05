//! TLS to PostgreSQL with rustls, as `database.sslmode` asks.
//!
//! `disable` never speaks TLS; `prefer` tries it and falls back to plain text; `require`
//! insists on it without checking the certificate (libpq's meaning); `verify-ca` insists and
//! checks the server's certificate chain against `database.ca_cert`; `verify-full` also checks
//! its name against the host (hosted Supabase serves a certificate of its own CA).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{DatabaseSettings, SslMode};
use crate::error::{Error, Result};

/// The connector for `settings`, and the connection config with the matching `sslmode`.
pub fn connector(
    settings: &DatabaseSettings,
) -> Result<(MakeRustlsConnect, tokio_postgres::Config)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("database.sslmode", e))?;
    let mut pg = settings.pg.clone();
    let config = match settings.sslmode {
        verified @ (SslMode::VerifyFull | SslMode::VerifyCa) => {
            let path = settings.ca_cert.as_ref().ok_or_else(|| {
                Error::config(
                    "database.ca_cert",
                    "verify-full needs the CA certificate file",
                )
            })?;
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                Error::config("database.ca_cert", format!("{}: {e}", path.display()))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    Error::config("database.ca_cert", format!("{}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::config("database.ca_cert", format!("{}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::config(
                    "database.ca_cert",
                    format!("{}: no certificate in it", path.display()),
                ));
            }
            pg.ssl_mode(PgSslMode::Require);
            if verified == SslMode::VerifyFull {
                builder.with_root_certificates(roots).with_no_client_auth()
            } else {
                let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| Error::config("database.ca_cert", e))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Verifier {
                        chain: Some(chain),
                        provider: provider.clone(),
                    }))
                    .with_no_client_auth()
            }
        }
        mode => {
            pg.ssl_mode(match mode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            });
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier {
                    chain: None,
                    provider,
                }))
                .with_no_client_auth()
        }
    };
    Ok((MakeRustlsConnect::new(config), pg))
}

/// The verifier of `prefer` and `require` (no chain: encryption without authentication of the
/// server, libpq's meaning) and of `verify-ca` (the chain must lead to the CA; the name in the
/// certificate is not compared with the host, libpq's meaning). Signatures are checked with
/// the provider's algorithms either way.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
