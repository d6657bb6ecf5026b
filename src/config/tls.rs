//! `providers.<name>.tls`: a provider reached over TLS the platform does not vouch for by itself —
//! a server behind the company's own CA, one that wants a client certificate (mutual TLS). The PEM
//! files are read and parsed once, at start, so that a missing file, a file without a certificate
//! or a key that does not parse is an error naming the key and the file, never a failed call later.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::file::RawTls;
use super::resolver::Resolver;

/// What a provider's TLS trusts and presents, beside the platform's own roots.
pub struct Tls {
    /// Certificates of the CAs the provider's server certificate may chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// Whether the platform's roots stay trusted beside `roots` (they do unless the file says not).
    pub system_roots: bool,
    /// The client certificate chain and its key, for mutual TLS.
    pub client: Option<ClientIdentity>,
}

/// A client certificate chain and its private key.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where they were read, for the error that says they do not belong together.
    pub cert_file: String,
    pub key_file: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key's bytes.
        f.debug_struct("Tls")
            .field("roots", &self.roots.len())
            .field("system_roots", &self.system_roots)
            .field(
                "client",
                &self.client.as_ref().map(|client| &client.cert_file),
            )
            .finish()
    }
}

impl Resolver<'_> {
    /// `at` is where the provider is written, for a mistake in the table as a whole.
    pub(super) fn tls(&mut self, raw: &RawTls, key: &str, at: usize) -> Option<Tls> {
        let key = format!("{key}.tls");
        let roots = match &raw.ca_file {
            Some(text) => self.certificates(text, &format!("{key}.ca_file"))?,
            None => Vec::new(),
        };
        let client = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(cert), Some(private)) => {
                let chain = self.certificates(cert, &format!("{key}.client_cert"));
                let parsed = self.private_key(private, &format!("{key}.client_key"));
                let (chain, (key, key_file)) = (chain?, parsed?);
                Some(ClientIdentity {
                    chain,
                    key,
                    cert_file: self.base_dir.join(cert.get_ref()).display().to_string(),
                    key_file,
                })
            }
            (Some(text), None) | (None, Some(text)) => {
                self.issue_at(
                    text.span().start,
                    &key,
                    "needs both client_cert and client_key for mutual TLS, or neither",
                );
                return None;
            }
        };
        let system_roots = raw.system_roots.unwrap_or(true);
        if !system_roots && roots.is_empty() {
            self.issue_at(
                at,
                &format!("{key}.system_roots"),
                "is false but no ca_file is given: no server could be trusted; add ca_file",
            );
            return None;
        }
        Some(Tls {
            roots,
            system_roots,
            client,
        })
    }

    /// The certificates of a PEM file: at least one, each parsed.
    fn certificates(
        &mut self,
        text: &super::file::Text,
        key: &str,
    ) -> Option<Vec<CertificateDer<'static>>> {
        let path = self.base_dir.join(self.string(text, key)?);
        let shown = path.display().to_string();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => {
                self.read.push((path.clone(), bytes.clone()));
                bytes
            }
            Err(err) => {
                self.issue_at(
                    text.span().start,
                    key,
                    &format!("cannot read {shown}: {err}"),
                );
                return None;
            }
        };
        match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(certificates) if !certificates.is_empty() => Some(certificates),
            Ok(_) => {
                self.issue_at(
                    text.span().start,
                    key,
                    &format!("{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
                );
                None
            }
            Err(err) => {
                self.issue_at(
                    text.span().start,
                    key,
                    &format!("{shown} is not a PEM certificate file: {err}"),
                );
                None
            }
        }
    }

    /// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1), and the file's path.
    fn private_key(
        &mut self,
        text: &super::file::Text,
        key: &str,
    ) -> Option<(PrivateKeyDer<'static>, String)> {
        let path = self.base_dir.join(self.string(text, key)?);
        let shown = path.display().to_string();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => {
                self.read.push((path.clone(), bytes.clone()));
                bytes
            }
            Err(err) => {
                self.issue_at(
                    text.span().start,
                    key,
                    &format!("cannot read {shown}: {err}"),
                );
                return None;
            }
        };
        match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(private) => Some((private, shown)),
            Err(err) => {
                self.issue_at(
                    text.span().start,
                    key,
                    &format!("{shown} holds no PEM private key it can read: {err}"),
                );
                None
            }
        }
    }
}
