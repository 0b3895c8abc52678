//! TLS for the MySQL driver's connections: mysql_async's options for ours, command-line flags for
//! mysqldump (MariaDB's and MySQL's spell them differently).

use etcd_sync_api::{DriverError, TlsMode, TlsSettings};
use mysql_async::{ClientIdentity, SslOpts};

/// Refuses what the MySQL side cannot do as asked.
pub fn validate(settings: &TlsSettings) -> Result<(), String> {
    if settings.mode == TlsMode::VerifyCa {
        // MariaDB's mysqldump checks the CA only together with the name
        // (--ssl-verify-server-cert), and mysql_async's chain-only option does not work with
        // the rustls it uses: rather than pretend, refuse.
        return Err(
            "mode verify-ca is not available with the mysql driver (MariaDB's mysqldump \
                    cannot check the CA without the host name): use verify-full, with a server \
                    certificate that names database.host"
                .into(),
        );
    }
    if settings.mode == TlsMode::VerifyFull && settings.ca_file.is_none() {
        return Err("mode verify-full needs ca_file".into());
    }
    if settings.cert_file.is_some() != settings.key_file.is_some() {
        return Err("cert_file and key_file go together".into());
    }
    Ok(())
}

/// mysql_async's options for `settings`; `None` means plain TCP.
pub fn ssl_opts(settings: &TlsSettings) -> Result<Option<SslOpts>, DriverError> {
    validate(settings).map_err(|e| DriverError::Misconfigured(format!("database.tls: {e}")))?;
    let mut opts = match settings.mode {
        TlsMode::Disable => return Ok(None),
        // As the mysql client: without verify-*, TLS protects against eavesdropping only.
        TlsMode::Prefer | TlsMode::Require => {
            SslOpts::default().with_danger_accept_invalid_certs(true)
        }
        TlsMode::VerifyCa | TlsMode::VerifyFull => SslOpts::default(),
    };
    if let Some(ca_file) = &settings.ca_file {
        opts = opts
            .with_root_certs(vec![std::path::PathBuf::from(ca_file).into()])
            .with_disable_built_in_roots(true);
    }
    if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
        opts = opts.with_client_identity(Some(ClientIdentity::new(
            std::path::PathBuf::from(cert).into(),
            std::path::PathBuf::from(key).into(),
        )));
    }
    Ok(Some(opts))
}

/// mysqldump's TLS flags; `mariadb` tells which client's spelling to use.
pub fn mysqldump_args(settings: &TlsSettings, mariadb: bool) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if mariadb {
        match settings.mode {
            TlsMode::Disable => args.push("--skip-ssl".into()),
            // Newer MariaDB clients check certificates by default; these modes do not.
            TlsMode::Prefer => args.push("--skip-ssl-verify-server-cert".into()),
            TlsMode::Require => {
                args.push("--ssl".into());
                args.push("--skip-ssl-verify-server-cert".into());
            }
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                args.push("--ssl".into());
                args.push("--ssl-verify-server-cert".into());
            }
        }
    } else {
        let mode = match settings.mode {
            TlsMode::Disable => "DISABLED",
            TlsMode::Prefer => "PREFERRED",
            TlsMode::Require => "REQUIRED",
            TlsMode::VerifyCa => "VERIFY_CA",
            TlsMode::VerifyFull => "VERIFY_IDENTITY",
        };
        args.push(format!("--ssl-mode={mode}"));
    }
    if settings.mode != TlsMode::Disable {
        let files = [
            ("--ssl-ca", &settings.ca_file),
            ("--ssl-cert", &settings.cert_file),
            ("--ssl-key", &settings.key_file),
        ];
        for (flag, file) in files {
            if let Some(file) = file {
                args.push(format!("{flag}={file}"));
            }
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: TlsMode) -> TlsSettings {
        TlsSettings {
            mode,
            ca_file: Some("/ca.pem".into()),
            ..TlsSettings::default()
        }
    }

    #[test]
    fn mysqldump_flags_for_each_client() {
        let full = settings(TlsMode::VerifyFull);
        assert_eq!(
            mysqldump_args(&full, true),
            ["--ssl", "--ssl-verify-server-cert", "--ssl-ca=/ca.pem"]
        );
        assert_eq!(
            mysqldump_args(&full, false),
            ["--ssl-mode=VERIFY_IDENTITY", "--ssl-ca=/ca.pem"]
        );
        assert_eq!(
            mysqldump_args(&settings(TlsMode::Disable), true),
            ["--skip-ssl"]
        );
    }

    #[test]
    fn verify_ca_is_refused_with_the_reason() {
        let err = validate(&settings(TlsMode::VerifyCa)).unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
    }
}
