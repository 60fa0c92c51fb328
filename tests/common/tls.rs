//! A test PKI (a CA, a server certificate for localhost and 127.0.0.1, two
//! client certificates) and TLS client configurations that trust it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub struct Pki {
    pub ca_pem: String,
    pub server_cert: String,
    pub server_key: String,
    /// (certificate PEM, key PEM) of a client named `svc-a.tenants.internal`.
    pub client_a: (String, String),
    /// A client the CA signed but no tenant names.
    pub client_other: (String, String),
}

pub fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subject names: OpenSSL takes a leaf whose subject equals its
    // issuer's for a self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ark-gateway test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert,
        server_key,
        client_a: leaf(
            vec!["svc-a.tenants.internal".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        client_other: leaf(
            vec!["svc-z.tenants.internal".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    }
}

impl Pki {
    /// Writes the server's certificate, key and the CA into `dir`; returns
    /// a `[server.tls]` section that serves with them.
    pub fn server_tls_section(&self, dir: &Path) -> String {
        let file = |name: &str, content: &str| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let cert = file("server.pem", &self.server_cert);
        let key = file("server.key", &self.server_key);
        file("ca.pem", &self.ca_pem);
        format!(
            "\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )
    }

    /// A client configuration that trusts the CA, offering `alpn`.
    pub fn client_config(&self, client: Option<&(String, String)>, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}
