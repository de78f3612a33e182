//! How a process proves who it is to NATS and checks who NATS is: credentials and
//! TLS, read from the environment in this one place for every service and the CLI.
//!
//! - Credentials, first one set wins: `NATS_CREDS` (a `.creds` file: JWT + NKey
//!   seed), else `NATS_USER` + `NATS_PASSWORD`, else `NATS_TOKEN`; none is anonymous.
//! - TLS: a `tls://` URL requires it; `NATS_CA` trusts a private CA (only with
//!   `tls://` URLs, so a CA never stands in for encryption that is not asked for);
//!   `NATS_CERT` + `NATS_KEY` present a client certificate (mutual TLS).
//!
//! A process with a second identity (gateway-api's admin console) reads that one's
//! credentials from the same variables with a prefix (`CONSOLE_NATS_USER`, …) and
//! shares the process's TLS settings: [`NatsAccess::from_env_prefixed`].
//!
//! The variables are read here, never into `Config`, so printing a config never
//! shows them; `Debug` of [`NatsAccess`] hides the secrets too.
//!
//! A user's reply inboxes are `_INBOX.<user>.…` rather than `_INBOX.…`, so the
//! server can let each user subscribe to its own replies only (deploy/nats).

use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;

use crate::BusError;

/// Credentials and TLS settings for connecting to NATS.
#[derive(Clone)]
pub struct NatsAccess {
    auth: Auth,
    tls: Tls,
}

#[derive(Clone)]
enum Auth {
    Anonymous,
    /// The contents of a `.creds` file, and where it came from.
    Creds {
        path: PathBuf,
        contents: String,
    },
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
}

#[derive(Clone, Default)]
struct Tls {
    required: bool,
    ca: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
}

impl NatsAccess {
    /// Reads `NATS_CREDS`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_CA`,
    /// `NATS_CERT` and `NATS_KEY` for connecting to `url`.
    pub fn from_env(url: &str) -> Result<Self, BusError> {
        Self::from_vars(url, |name| std::env::var(name).ok())
    }

    /// Like [`NatsAccess::from_env`], with the variables looked up by `var`. An empty
    /// value counts as unset.
    pub fn from_vars(url: &str, var: impl Fn(&str) -> Option<String>) -> Result<Self, BusError> {
        Self::read(url, "", var)
    }

    /// A second identity of this process: credentials from `<prefix>NATS_CREDS`,
    /// `<prefix>NATS_USER` + `<prefix>NATS_PASSWORD` or `<prefix>NATS_TOKEN`, TLS from
    /// the process's own `NATS_CA`, `NATS_CERT` and `NATS_KEY` (the same server).
    /// `None` when none of the prefixed credentials is set.
    pub fn from_env_prefixed(prefix: &str, url: &str) -> Result<Option<Self>, BusError> {
        Self::from_vars_prefixed(prefix, url, |name| std::env::var(name).ok())
    }

    /// Like [`NatsAccess::from_env_prefixed`], with the variables looked up by `var`.
    pub fn from_vars_prefixed(
        prefix: &str,
        url: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, BusError> {
        let set = ["NATS_CREDS", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN"]
            .iter()
            .any(|name| var(&format!("{prefix}{name}")).is_some_and(|v| !v.trim().is_empty()));
        if !set {
            return Ok(None);
        }
        Self::read(url, prefix, var).map(Some)
    }

    /// Credentials from `<prefix>NATS_…`, TLS from the unprefixed variables.
    fn read(
        url: &str,
        prefix: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BusError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let (creds_var, user_var, password_var, token_var) = (
            format!("{prefix}NATS_CREDS"),
            format!("{prefix}NATS_USER"),
            format!("{prefix}NATS_PASSWORD"),
            format!("{prefix}NATS_TOKEN"),
        );
        let auth = if let Some(path) = var(&creds_var) {
            let path = PathBuf::from(path);
            let contents = std::fs::read_to_string(&path).map_err(|e| {
                settings(format!("{creds_var}: cannot read {}: {e}", path.display()))
            })?;
            // Parsed now, so a wrong file is named at start, not at the first connect.
            ConnectOptions::new().credentials(&contents).map_err(|e| {
                settings(format!(
                    "{creds_var}: {} is not a NATS credentials file (JWT and NKey seed): {e}",
                    path.display()
                ))
            })?;
            Auth::Creds { path, contents }
        } else {
            match (var(&user_var), var(&password_var)) {
                (Some(user), Some(password)) => Auth::UserPassword { user, password },
                (Some(_), None) => {
                    return Err(settings(format!(
                        "{user_var} is set but {password_var} is not"
                    )));
                }
                (None, Some(_)) => {
                    return Err(settings(format!(
                        "{password_var} is set but {user_var} is not"
                    )));
                }
                (None, None) => match var(&token_var) {
                    Some(token) => Auth::Token(token),
                    None => Auth::Anonymous,
                },
            }
        };

        let schemes: Vec<&str> = url
            .split(',')
            .map(|u| {
                u.trim()
                    .split_once("://")
                    .map_or("nats", |(scheme, _)| scheme)
            })
            .collect();
        let tls_urls = schemes.iter().filter(|s| **s == "tls").count();
        if tls_urls != 0 && tls_urls != schemes.len() {
            return Err(settings(format!(
                "NATS_URL mixes tls:// and plain URLs ({url}): use tls:// for every server"
            )));
        }
        let mut tls = Tls {
            required: tls_urls != 0,
            ..Tls::default()
        };
        if let Some(ca) = var("NATS_CA") {
            if !tls.required {
                return Err(settings(format!(
                    "NATS_CA is set but NATS_URL ({url}) is not a tls:// URL: use tls://host:port so the connection is encrypted"
                )));
            }
            let ca = PathBuf::from(ca);
            check_certificates("NATS_CA", &ca)?;
            tls.ca = Some(ca);
        }
        match (var("NATS_CERT"), var("NATS_KEY")) {
            (Some(cert), Some(key)) => {
                if !tls.required {
                    return Err(settings(format!(
                        "NATS_CERT and NATS_KEY are set but NATS_URL ({url}) is not a tls:// URL"
                    )));
                }
                let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
                check_certificates("NATS_CERT", &cert)?;
                check_key("NATS_KEY", &key)?;
                tls.client = Some((cert, key));
            }
            (Some(_), None) => return Err(settings("NATS_CERT is set but NATS_KEY is not".into())),
            (None, Some(_)) => return Err(settings("NATS_KEY is set but NATS_CERT is not".into())),
            (None, None) => {}
        }
        Ok(Self { auth, tls })
    }

    /// The servers of `NATS_URL`: one URL, or several separated by commas (the seeds
    /// of a cluster; the client fails over between them and learns the others').
    pub fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
        url.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse()
                    .map_err(|e| settings(format!("NATS_URL: {u} is not a server address: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|servers| {
                if servers.is_empty() {
                    Err(settings("NATS_URL is empty".into()))
                } else {
                    Ok(servers)
                }
            })
    }

    /// Connect options carrying these credentials and TLS settings; the caller adds
    /// its name, timeouts and callbacks.
    pub fn options(&self) -> Result<ConnectOptions, BusError> {
        let mut options = match &self.auth {
            Auth::Anonymous => ConnectOptions::new(),
            Auth::Creds { path, contents } => ConnectOptions::new()
                .credentials(contents)
                .map_err(|e| settings(format!("NATS_CREDS: {}: {e}", path.display())))?,
            Auth::UserPassword { user, password } => {
                let options =
                    ConnectOptions::new().user_and_password(user.clone(), password.clone());
                match inbox_prefix(user) {
                    Some(prefix) => options.custom_inbox_prefix(prefix),
                    None => options,
                }
            }
            Auth::Token(token) => ConnectOptions::new().token(token.clone()),
        };
        if self.tls.required {
            // async-nats builds its rustls config with the process default provider;
            // with more than one compiled in (ring here, aws-lc-rs through some HTTP
            // stacks) there is none until one is installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }

    /// Who connects and how, without secrets: for logs and error messages.
    pub fn describe(&self) -> String {
        let who = match &self.auth {
            Auth::Anonymous => "without credentials".to_owned(),
            Auth::Creds { path, .. } => format!("with credentials file {}", path.display()),
            Auth::UserPassword { user, .. } => format!("as user {user}"),
            Auth::Token(_) => "with a token".to_owned(),
        };
        let tls = match (&self.tls.required, &self.tls.ca, &self.tls.client) {
            (false, ..) => String::new(),
            (true, None, None) => " over TLS".to_owned(),
            (true, ca, client) => format!(
                " over TLS{}{}",
                ca.as_ref()
                    .map(|c| format!(" (CA {})", c.display()))
                    .unwrap_or_default(),
                client
                    .as_ref()
                    .map(|(c, _)| format!(" (client certificate {})", c.display()))
                    .unwrap_or_default()
            ),
        };
        format!("{who}{tls}")
    }
}

impl std::fmt::Debug for NatsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Connect options for `url` from the environment: what every connection of every
/// Nexus process starts from.
pub fn connect_options(url: &str) -> Result<ConnectOptions, BusError> {
    NatsAccess::from_env(url)?.options()
}

/// `_INBOX.<user>` for a user name that is one subject token (letters, digits, `-`, `_`).
fn inbox_prefix(user: &str) -> Option<String> {
    user.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        .then(|| format!("_INBOX.{user}"))
}

fn settings(message: String) -> BusError {
    BusError::Settings(message)
}

fn check_certificates(var: &str, path: &Path) -> Result<(), BusError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(path)
        .map_err(|e| settings(format!("{var}: cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| settings(format!("{var}: {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(settings(format!(
            "{var}: {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(())
}

fn check_key(var: &str, path: &Path) -> Result<(), BusError> {
    use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
    let pem = std::fs::read(path)
        .map_err(|e| settings(format!("{var}: cannot read {}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map(|_| ())
        .map_err(|e| {
            settings(format!(
                "{var}: {} holds no PEM private key: {e}",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn access(url: &str, vars: &[(&str, &str)]) -> Result<NatsAccess, BusError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        NatsAccess::from_vars(url, |name| vars.get(name).cloned())
    }

    #[test]
    fn a_cluster_is_listed_comma_separated() {
        let servers = NatsAccess::servers("nats://a:4222, nats://b:4222,nats://c:4222").unwrap();
        assert_eq!(servers.len(), 3);
        for bad in ["", " , ", "nats://a:notaport"] {
            let e = NatsAccess::servers(bad).unwrap_err().to_string();
            assert!(e.contains("NATS_URL"), "{bad:?}: {e}");
        }
    }

    fn error(url: &str, vars: &[(&str, &str)]) -> String {
        match access(url, vars) {
            Ok(a) => panic!("expected an error, got {a:?}"),
            Err(e) => e.to_string(),
        }
    }

    // A throwaway self-signed certificate (CN=test), only parsed here.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBczCCARugAwIBAgIUC5XfDeo85D/uZFyJxfBfK+7ynUgwCgYIKoZIzj0EAwIw
DzENMAsGA1UEAwwEdGVzdDAgFw0yNjEyMDIxMzAyMzNaGA8yMTI2MTEwODEzMDIz
M1owDzENMAsGA1UEAwwEdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABJnx
PHxxGcRGkr0XPcl4j8l9bhO5GY2lnX2CTsl5CfzbGRz7YixXJnnbLcS/Az++cxVe
4LeKdDqi+uFKdYwiJKKjUzBRMB0GA1UdDgQWBBRtTyIswsJiCN/VcfClNR9xzfyY
YjAfBgNVHSMEGDAWgBRtTyIswsJiCN/VcfClNR9xzfyYYjAPBgNVHRMBAf8EBTAD
AQH/MAoGCCqGSM49BAMCA0YAMEMCIGkP2JujZ4WmbU+sMhnzWypN0Cz/6df4hfhi
17lvLY8qAh9y+r6L9SfBphRXNHOSG+QGHTHggp6Ay/v1dPUzGGul
-----END CERTIFICATE-----
";

    #[test]
    fn nothing_set_connects_anonymously_in_plain_text() {
        let a = access("nats://127.0.0.1:4222", &[]).unwrap();
        assert_eq!(a.describe(), "without credentials");
        assert!(a.options().is_ok());
    }

    #[test]
    fn credentials_follow_creds_then_user_and_password_then_token() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("svc.creds");
        std::fs::write(&creds, CREDS).unwrap();
        let creds = creds.display().to_string();
        let all = [
            ("NATS_CREDS", creds.as_str()),
            ("NATS_USER", "agent-core"),
            ("NATS_PASSWORD", "pw-123456"),
            ("NATS_TOKEN", "tok-123456"),
        ];
        let a = access("nats://h:4222", &all).unwrap();
        assert_eq!(a.describe(), format!("with credentials file {creds}"));
        let a = access("nats://h:4222", &all[1..]).unwrap();
        assert_eq!(a.describe(), "as user agent-core");
        let a = access("nats://h:4222", &all[3..]).unwrap();
        assert_eq!(a.describe(), "with a token");
        // Empty counts as unset.
        let a = access(
            "nats://h:4222",
            &[("NATS_USER", ""), ("NATS_TOKEN", "tok-123456")],
        )
        .unwrap();
        assert_eq!(a.describe(), "with a token");
    }

    #[test]
    fn a_user_without_a_password_is_an_error_naming_the_missing_variable() {
        let e = error("nats://h:4222", &[("NATS_USER", "agent-core")]);
        assert_eq!(
            e,
            "NATS settings: NATS_USER is set but NATS_PASSWORD is not"
        );
        let e = error("nats://h:4222", &[("NATS_PASSWORD", "pw-123456")]);
        assert!(
            e.contains("NATS_PASSWORD is set but NATS_USER is not"),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_or_wrong_creds_file_is_an_error_naming_nats_creds() {
        let e = error(
            "nats://h:4222",
            &[("NATS_CREDS", "/nonexistent/nexus.creds")],
        );
        assert!(
            e.contains("NATS_CREDS: cannot read /nonexistent/nexus.creds"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.creds");
        std::fs::write(&path, "hello").unwrap();
        let e = error(
            "nats://h:4222",
            &[("NATS_CREDS", &path.display().to_string())],
        );
        assert!(
            e.contains("NATS_CREDS:") && e.contains("not a NATS credentials file"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_without_a_tls_url_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CERT).unwrap();
        let ca = ca.display().to_string();
        let e = error("nats://h:4222", &[("NATS_CA", &ca)]);
        assert!(
            e.contains("NATS_CA is set but NATS_URL (nats://h:4222) is not a tls://"),
            "{e}"
        );
        let a = access("tls://h:4222", &[("NATS_CA", &ca)]).unwrap();
        assert_eq!(
            a.describe(),
            format!("without credentials over TLS (CA {ca})")
        );
    }

    #[test]
    fn tls_files_must_be_readable_pem() {
        let e = error("tls://h:4222", &[("NATS_CA", "/nonexistent/ca.pem")]);
        assert!(
            e.contains("NATS_CA: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = error("tls://h:4222", &[("NATS_CA", &junk.display().to_string())]);
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = error("tls://h:4222", &[("NATS_CERT", "/x/cert.pem")]);
        assert!(e.contains("NATS_CERT is set but NATS_KEY is not"), "{e}");
    }

    #[test]
    fn mixed_tls_and_plain_urls_are_refused() {
        let e = error("tls://a:4222,nats://b:4222", &[]);
        assert!(e.contains("mixes tls:// and plain URLs"), "{e}");
        assert_eq!(
            access("tls://a:4222, tls://b:4222", &[])
                .unwrap()
                .describe(),
            "without credentials over TLS"
        );
    }

    #[test]
    fn a_second_identity_has_credentials_of_its_own_and_the_processs_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CERT).unwrap();
        let ca = ca.display().to_string();
        let vars: HashMap<&str, &str> = [
            ("NATS_USER", "gateway-api"),
            ("NATS_PASSWORD", "pw-gateway"),
            ("NATS_CA", ca.as_str()),
            ("CONSOLE_NATS_USER", "console"),
            ("CONSOLE_NATS_PASSWORD", "pw-console"),
        ]
        .into();
        let lookup = |name: &str| vars.get(name).map(|v| (*v).to_owned());
        let a = NatsAccess::from_vars_prefixed("CONSOLE_", "tls://h:4222", lookup)
            .unwrap()
            .unwrap();
        assert_eq!(a.describe(), format!("as user console over TLS (CA {ca})"));
        // The process's own credentials never stand in for the second identity's.
        let none = NatsAccess::from_vars_prefixed("CONSOLE_", "nats://h:4222", |name| {
            (!name.starts_with("CONSOLE_"))
                .then(|| lookup(name))
                .flatten()
        })
        .unwrap();
        assert!(none.is_none());
        let e = NatsAccess::from_vars_prefixed("CONSOLE_", "nats://h:4222", |name| {
            (name == "CONSOLE_NATS_USER").then(|| "console".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "NATS settings: CONSOLE_NATS_USER is set but CONSOLE_NATS_PASSWORD is not"
        );
    }

    #[test]
    fn a_users_reply_inboxes_carry_its_name() {
        assert_eq!(
            inbox_prefix("agent-core").as_deref(),
            Some("_INBOX.agent-core")
        );
        assert_eq!(inbox_prefix("a.b"), None);
        assert_eq!(inbox_prefix("a b"), None);
    }

    #[test]
    fn debug_shows_no_secret() {
        let a = access(
            "nats://h:4222",
            &[("NATS_USER", "gw"), ("NATS_PASSWORD", "s3cret-pass")],
        )
        .unwrap();
        assert!(!format!("{a:?}").contains("s3cret-pass"));
        let a = access("nats://h:4222", &[("NATS_TOKEN", "s3cret-token")]).unwrap();
        assert!(!format!("{a:?}").contains("s3cret-token"));
    }

    // A user credentials file as `nsc` writes it (async-nats' test user, throwaway keys).
    const CREDS: &str = "-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJMN1dBT1hJU0tPSUZNM1QyNEhMQ09ENzJRT1czQkNVWEdETjRKVU1SSUtHTlQ3RzdZVFRRIiwiaWF0IjoxNjUxNzkwOTgyLCJpc3MiOiJBRFRRUzdaQ0ZWSk5XNTcyNkdPWVhXNVRTQ1pGTklRU0hLMlpHWVVCQ0Q1RDc3T1ROTE9PS1pPWiIsIm5hbWUiOiJUZXN0VXNlciIsInN1YiI6IlVBRkhHNkZVRDJVVTRTREZWQUZVTDVMREZPMlhNNFdZTTc2VU5YVFBKWUpLN0VFTVlSQkhUMlZFIiwibmF0cyI6eyJwdWIiOnt9LCJzdWIiOnt9LCJzdWJzIjotMSwiZGF0YSI6LTEsInBheWxvYWQiOi0xLCJ0eXBlIjoidXNlciIsInZlcnNpb24iOjJ9fQ.bp2-Jsy33l4ayF7Ku1MNdJby4WiMKUrG-rSVYGBusAtV3xP4EdCa-zhSNUaBVIL3uYPPCQYCEoM1pCUdOnoJBg
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
SUACH75SWCM5D2JMJM6EKLR2WDARVGZT4QC6LX3AGHSWOMVAKERABBBRWM
------END USER NKEY SEED------

*************************************************************
";
}
