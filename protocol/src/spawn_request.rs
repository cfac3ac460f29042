//! The body of `POST /v1/backends`, and its validation. Kept apart from the handler so that the
//! CLI builds the very same type it will be checked against.

use crate::messages::{BackendSpec, Executable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Idle timeout of a backend whose spawn request does not give one.
pub const DEFAULT_MAX_IDLE_SECS: u64 = 300;

/// The longest idle timeout a spawn may ask for (one week).
pub const MAX_MAX_IDLE_SECS: u64 = 7 * 24 * 3600;

/// Most arguments a command may have, and most environment variables a spawn may set.
pub const MAX_COMMAND_ARGS: usize = 1024;
pub const MAX_ENV_VARS: usize = 1024;

/// Environment variables Plane sets itself; a spawn may not override them.
pub const RESERVED_ENV: &[&str] = &["PORT", "PLANE_BACKEND_ID", "PLANE_CLUSTER", "PLANE_KEY"];

/// A request to run one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// What to run.
    pub executable: Executable,
    /// Seconds without connections before the backend is swept; default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_secs: Option<u64>,
    /// Extra environment for the backend.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Clients must show an access token to reach the backend: the spawn answer carries it
    /// (`token`), and nothing else ever shows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_token: bool,
}

/// Why a spawn body was refused; the text names the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct InvalidSpawn {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidSpawn {
    InvalidSpawn {
        field: field.into(),
        problem: problem.into(),
    }
}

impl SpawnRequest {
    /// Parses and validates a JSON body. Errors name the field at fault.
    pub fn from_json(body: &[u8]) -> Result<BackendSpec, InvalidSpawn> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let request: SpawnRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            invalid(field, e.inner().to_string())
        })?;
        de.end()
            .map_err(|e| invalid("body", format!("trailing data after the JSON object: {e}")))?;
        request.validate()
    }

    /// Checks every field and returns the spec a drone runs.
    pub fn validate(self) -> Result<BackendSpec, InvalidSpawn> {
        let command = &self.executable.command;
        if command.is_empty() {
            return Err(invalid("executable.command", "must name a program to run"));
        }
        if command[0].is_empty() {
            return Err(invalid("executable.command[0]", "program name is empty"));
        }
        if command.len() > MAX_COMMAND_ARGS {
            return Err(invalid(
                "executable.command",
                format!("more than {MAX_COMMAND_ARGS} arguments"),
            ));
        }
        if let Some(i) = command.iter().position(|a| a.contains('\0')) {
            return Err(invalid(
                format!("executable.command[{i}]"),
                "contains a NUL byte",
            ));
        }
        let max_idle_secs = self.max_idle_secs.unwrap_or(DEFAULT_MAX_IDLE_SECS);
        if max_idle_secs == 0 || max_idle_secs > MAX_MAX_IDLE_SECS {
            return Err(invalid(
                "max_idle_secs",
                format!("must be between 1 and {MAX_MAX_IDLE_SECS}"),
            ));
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(invalid(
                "env",
                format!("more than {MAX_ENV_VARS} variables"),
            ));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid(
                    format!("env.{key}"),
                    "a variable name must be non-empty without '=' or NUL",
                ));
            }
            if value.contains('\0') {
                return Err(invalid(format!("env.{key}"), "value contains a NUL byte"));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return Err(invalid(format!("env.{key}"), "is set by Plane itself"));
            }
        }
        Ok(BackendSpec {
            executable: self.executable,
            max_idle_secs,
            env: self.env,
            require_token: self.require_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match SpawnRequest::from_json(body.as_bytes()) {
            Ok(spec) => panic!("expected an error, got {spec:?}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn accepts_the_documented_body() {
        let spec = SpawnRequest::from_json(
            br#"{"executable": {"command": ["my-server", "--flag"]}, "max_idle_secs": 30, "env": {"K": "V"}}"#,
        )
        .expect("valid body");
        assert_eq!(spec.executable.command, ["my-server", "--flag"]);
        assert_eq!(spec.max_idle_secs, 30);
        assert_eq!(spec.env.get("K").map(String::as_str), Some("V"));
    }

    #[test]
    fn defaults_the_idle_timeout() {
        let spec =
            SpawnRequest::from_json(br#"{"executable": {"command": ["x"]}}"#).expect("valid body");
        assert_eq!(spec.max_idle_secs, DEFAULT_MAX_IDLE_SECS);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"executable": {"command": []}}"#),
            "executable.command"
        );
        assert_eq!(
            field_of(r#"{"executable": {"command": ["x"]}, "max_idle_secs": "ten"}"#),
            "max_idle_secs"
        );
        assert_eq!(
            field_of(r#"{"executable": {"command": ["x"]}, "max_idle_secs": 0}"#),
            "max_idle_secs"
        );
        assert_eq!(
            field_of(r#"{"executable": {"command": ["x"]}, "env": {"PORT": "1"}}"#),
            "env.PORT"
        );
        assert_eq!(
            field_of(r#"{"executable": {"command": ["x"]}, "colour": 1}"#),
            "colour"
        );
        assert_eq!(field_of("not json"), "body");
        assert_eq!(
            field_of(r#"{"executable": {"command": ["x"]}} trailing"#),
            "body"
        );
        assert_eq!(
            field_of(r#"{"executable": {"command": [1]}}"#),
            "executable.command[0]"
        );
    }

    #[test]
    fn missing_field_is_named_in_the_message() {
        let err = SpawnRequest::from_json(b"{}").expect_err("executable is required");
        assert!(err.to_string().contains("executable"), "{err}");
    }
}
