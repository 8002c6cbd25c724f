//! TLS to a `tcp://` daemon with client certificates (`dockerd --tlsverify`), through
//! bollard's `ssl` feature (rustls on ring).

use std::path::{Path, PathBuf};

use berth_engine_core::Error;
use bollard::Docker;

use crate::errors::BACKEND;
use crate::TlsConfig;

/// The three files of `tls`, each checked to be readable; errors name the file.
fn files(tls: &TlsConfig) -> Result<(PathBuf, PathBuf, PathBuf), Error> {
    if !tls.verify {
        return Err(Error::invalid_spec(
            "tls.verify",
            "false is not supported: berth always verifies the daemon's certificate; give tls.ca the CA that signed it",
        ));
    }
    let pick = |field: &str, file: &Option<PathBuf>| -> Result<PathBuf, Error> {
        let path = file.clone().ok_or_else(|| {
            Error::invalid_spec(field, "missing: expected the path of a PEM file")
        })?;
        check_pem(field, &path)?;
        Ok(path)
    };
    Ok((
        pick("tls.ca", &tls.ca)?,
        pick("tls.cert", &tls.cert)?,
        pick("tls.key", &tls.key)?,
    ))
}

fn check_pem(field: &str, path: &Path) -> Result<(), Error> {
    let text = std::fs::read(path).map_err(|e| {
        Error::invalid_spec(
            field,
            format!(
                "cannot read {}: {e} (with DOCKER_TLS_VERIFY set, files come from DOCKER_CERT_PATH or ~/.docker)",
                path.display()
            ),
        )
    })?;
    if !text.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::invalid_spec(
            field,
            format!("{} is not a PEM file (no -----BEGIN line)", path.display()),
        ));
    }
    Ok(())
}

/// A client for `address` over TLS with `tls`'s files.
#[cfg(feature = "tls")]
pub(crate) fn connect(address: &str, tls: &TlsConfig) -> Result<Docker, Error> {
    let (ca, cert, key) = files(tls)?;
    let address = address.replacen("tcp://", "https://", 1);
    Docker::connect_with_ssl(
        &address,
        &key,
        &cert,
        &ca,
        crate::DEFAULT_TIMEOUT_SECS,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| match e {
        bollard::errors::Error::CertPathError { path }
        | bollard::errors::Error::CertParseError { path } => Error::invalid_spec(
            "tls",
            format!("cannot use {}: expected PEM certificates", path.display()),
        ),
        other => crate::errors::unavailable(&address, other),
    })
}

/// Without the `tls` feature a TLS daemon cannot be reached.
#[cfg(not(feature = "tls"))]
pub(crate) fn connect(address: &str, tls: &TlsConfig) -> Result<Docker, Error> {
    files(tls)?;
    Err(Error::Unsupported {
        backend: BACKEND,
        operation: "TLS to a tcp:// daemon",
        reason: format!(
            "{address} needs TLS, but this berth was built without berth-engine-docker's `tls` feature"
        ),
    })
}

/// The error of a failed first call over TLS: an untrusted or expired daemon certificate,
/// or a refused client certificate, says so.
pub(crate) fn classify(address: &str, tls: &TlsConfig, err: bollard::errors::Error) -> Error {
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        chain.push_str(&format!("{e:?} "));
        source = e.source();
    }
    let ca = tls
        .ca
        .as_deref()
        .map_or_else(|| "the CA".to_owned(), |p| p.display().to_string());
    let hint = if chain.contains("Expired") {
        Some(
            "the daemon's certificate has expired (or is not yet valid); renew it on the daemon, and check the clocks of both machines"
                .to_owned(),
        )
    } else if chain.contains("UnknownIssuer") || chain.contains("BadSignature") {
        Some(format!(
            "the daemon's certificate was not trusted: it is not signed by the CA in {ca}; point tls.ca (or DOCKER_CERT_PATH/ca.pem) at the CA that signed the daemon's certificate"
        ))
    } else if chain.contains("NotValidForName") {
        Some(format!(
            "the daemon's certificate is not valid for the host in {address}; connect by a name the certificate lists, or reissue it"
        ))
    } else if chain.contains("CertificateRequired")
        || chain.contains("BadCertificate")
        || chain.contains("UnknownCA")
        || chain.contains("DecryptError")
    {
        Some(format!(
            "the daemon refused the client certificate {}; use a client certificate signed by the daemon's CA",
            tls.cert
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        ))
    } else {
        None
    };
    match hint {
        Some(hint) => Error::Unavailable {
            backend: BACKEND,
            address: address.to_owned(),
            hint,
            source: Some(Box::new(err)),
        },
        None => crate::errors::unavailable(address, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_named() {
        let tls = TlsConfig {
            ca: Some(PathBuf::from("/nonexistent/berth/ca.pem")),
            cert: Some(PathBuf::from("/nonexistent/berth/cert.pem")),
            key: Some(PathBuf::from("/nonexistent/berth/key.pem")),
            verify: true,
        };
        let err = files(&tls).unwrap_err().to_string();
        assert!(
            err.contains("tls.ca") && err.contains("/nonexistent/berth/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn verify_false_is_refused_by_name() {
        assert!(TlsConfig::default().verify, "verification is on by default");
        let mut tls = TlsConfig::from_dir(Path::new("/nonexistent"));
        tls.verify = false;
        let err = files(&tls).unwrap_err().to_string();
        assert!(err.contains("tls.verify"), "{err}");
    }
}
