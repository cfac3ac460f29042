//! How to reach NATS: the servers, the credentials, TLS, the reply inbox, and how many replicas
//! the KV buckets this connection creates get. Secrets are held here but never printed.

use std::fmt;
use std::path::PathBuf;

/// Connection settings for [`crate::Bus::connect_with`].
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// One server's URL, or several separated by commas (the nodes of a NATS cluster).
    pub urls: String,
    pub auth: NatsAuth,
    pub tls: NatsTls,
    /// The prefix of this connection's reply subjects (`_INBOX` when `None`), so that NATS
    /// permissions can give each client its own.
    pub inbox_prefix: Option<String>,
    /// Replicas of the KV buckets this connection creates (3 on a three-node NATS cluster).
    pub kv_replicas: usize,
    /// The name the server shows for this connection.
    pub name: Option<String>,
}

impl NatsOptions {
    /// Plain settings for `urls`: no credentials, no TLS beyond what the URL asks for.
    pub fn new(urls: impl Into<String>) -> Self {
        NatsOptions {
            urls: urls.into(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            inbox_prefix: None,
            kv_replicas: 1,
            name: None,
        }
    }
}

/// How this connection proves who it is.
#[derive(Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// An nkey seed (`SU…`): the server knows the public key.
    NKey(String),
    /// A `.creds` file (a user JWT and its nkey seed), for servers in operator mode.
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user}, ..)"),
            NatsAuth::Token(_) => f.write_str("Token(..)"),
            NatsAuth::NKey(_) => f.write_str("NKey(..)"),
            NatsAuth::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// TLS towards NATS. Any of these set makes TLS required.
#[derive(Clone, Debug, Default)]
pub struct NatsTls {
    /// CA certificates (PEM) that the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), for servers that verify clients; with `key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl NatsTls {
    pub fn is_on(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}
