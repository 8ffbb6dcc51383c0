//! Which certificate authorities a TLS connection to MongoDB trusts: the
//! same file as the RabbitMQ connection.
//!
//! The driver trusts only the Mozilla roots compiled into it unless the URI
//! names `tlsCAFile`, while the broker's client reads the OS store, or
//! `SSL_CERT_FILE` when that is set. An internal CA added to the OS store
//! would then work for RabbitMQ and fail for MongoDB. So a TLS connection
//! string without `tlsCAFile` is given the file the broker's client reads:
//! `SSL_CERT_FILE`, or the OS bundle (`/etc/ssl/certs/ca-certificates.crt`
//! on Debian), as `openssl-probe` finds it for both.

use std::path::PathBuf;

use mongodb::options::{ClientOptions, Tls};

/// Makes a TLS connection trust the bundle the broker's client reads (see
/// [`trust_bundle`]). `SSL_CERT_DIR` without `SSL_CERT_FILE` is said at
/// WARN: the broker's client then reads those folders, which the driver
/// cannot (it takes one file).
pub(super) fn trust_like_the_broker(options: &mut ClientOptions) {
    if !matches!(options.tls, Some(Tls::Enabled(_))) {
        return;
    }
    if std::env::var_os("SSL_CERT_DIR").is_some() && std::env::var_os("SSL_CERT_FILE").is_none() {
        tracing::warn!(
            "SSL_CERT_DIR is set without SSL_CERT_FILE: RabbitMQ trusts those folders, MongoDB \
             cannot (it reads one file); set SSL_CERT_FILE to a bundle instead"
        );
    }
    trust_bundle(options, os_bundle());
}

/// The certificate bundle both connections trust: `SSL_CERT_FILE` when it
/// names an existing file, otherwise the OS bundle; `None` on a system
/// without one (a distroless image without CA certificates).
fn os_bundle() -> Option<PathBuf> {
    openssl_probe::probe().cert_file
}

/// Where TLS is on and the URI names no `tlsCAFile`, trusts `bundle`
/// instead of the driver's compiled-in roots. A URI's own `tlsCAFile` is
/// the operator's explicit choice and is kept; without a bundle the
/// driver's roots stay.
pub(super) fn trust_bundle(options: &mut ClientOptions, bundle: Option<PathBuf>) {
    let Some(Tls::Enabled(tls)) = options.tls.as_mut() else {
        return;
    };
    if tls.ca_file_path.is_none() {
        tls.ca_file_path = bundle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn options(uri: &str) -> ClientOptions {
        ClientOptions::parse(uri).await.expect("a valid URI")
    }

    fn ca_file(options: &ClientOptions) -> Option<PathBuf> {
        match options.tls.as_ref() {
            Some(Tls::Enabled(tls)) => tls.ca_file_path.clone(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_tls_uri_without_a_ca_file_trusts_the_bundle() {
        let mut tls = options("mongodb://db:27017/?tls=true").await;
        trust_bundle(&mut tls, Some("/etc/ssl/bundle.pem".into()));
        assert_eq!(ca_file(&tls), Some(PathBuf::from("/etc/ssl/bundle.pem")));
    }

    #[tokio::test]
    async fn a_uri_naming_its_ca_file_keeps_it() {
        let mut own = options("mongodb://db:27017/?tls=true&tlsCAFile=/own/ca.pem").await;
        trust_bundle(&mut own, Some("/etc/ssl/bundle.pem".into()));
        assert_eq!(ca_file(&own), Some(PathBuf::from("/own/ca.pem")));
    }

    #[tokio::test]
    async fn a_plain_uri_stays_plain_and_no_bundle_keeps_the_drivers_roots() {
        let mut plain = options("mongodb://db:27017/").await;
        trust_bundle(&mut plain, Some("/etc/ssl/bundle.pem".into()));
        assert!(!matches!(plain.tls, Some(Tls::Enabled(_))));
        let mut tls = options("mongodb://db:27017/?ssl=true").await;
        trust_bundle(&mut tls, None);
        assert_eq!(ca_file(&tls), None);
        assert!(matches!(tls.tls, Some(Tls::Enabled(_))));
    }
}
