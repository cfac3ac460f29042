//! Registry credentials for pulling a backend's image. They go from the spawn request to the
//! drone that runs the backend and nowhere else: never into a record, an answer, an event or a
//! log line, so their `Debug` shows the user name only.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A user name and password for the registry an image comes from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_password() {
        let credentials = RegistryCredentials {
            username: "robot".into(),
            password: "hunter2-secret".into(),
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("robot"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
