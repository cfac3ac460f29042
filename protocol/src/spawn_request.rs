//! The body of `POST /v1/backends`, and its validation. Kept apart from the handler so that the
//! CLI builds the very same type it will be checked against.

use crate::messages::{BackendSpec, Executable, PullPolicy, Resources};
use crate::registry::RegistryCredentials;
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

/// Longest image reference and readiness path accepted.
pub const MAX_IMAGE_LEN: usize = 512;
pub const MAX_READY_PATH_LEN: usize = 1024;

/// Docker refuses less memory than this for a container.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// Docker's smallest CPU share: a hundredth of a core.
pub const MIN_CPU_MILLIS: u64 = 10;

/// What to run, as the API takes it: [`Executable`] plus the registry credentials, which the
/// spec a drone stores and reports never holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnExecutable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
}

/// A request to run one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// What to run.
    pub executable: SpawnExecutable,
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
    /// Limits for a container.
    #[serde(default, skip_serializing_if = "Resources::is_unlimited")]
    pub resources: Resources,
    /// A path that must answer 2xx or 3xx before the backend counts as ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_path: Option<String>,
}

/// A checked spawn: the spec the drone runs, and the credentials only that drone is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidSpawn {
    pub spec: BackendSpec,
    pub credentials: Option<RegistryCredentials>,
}

/// A spec that needs no credentials.
impl From<BackendSpec> for ValidSpawn {
    fn from(spec: BackendSpec) -> ValidSpawn {
        ValidSpawn {
            spec,
            credentials: None,
        }
    }
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

/// Parses a JSON body into `T`; errors name the field at fault.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InvalidSpawn> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
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
    Ok(parsed)
}

/// An idle timeout in its bounds.
fn check_max_idle(secs: u64) -> Result<u64, InvalidSpawn> {
    if secs == 0 || secs > MAX_MAX_IDLE_SECS {
        return Err(invalid(
            "max_idle_secs",
            format!("must be between 1 and {MAX_MAX_IDLE_SECS}"),
        ));
    }
    Ok(secs)
}

/// The body of `PATCH /v1/backends/{id}`: what can change while a backend runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendUpdate {
    /// A new idle timeout, used by the sweeper at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_secs: Option<u64>,
}

impl BackendUpdate {
    /// Parses and validates a JSON body; an update that changes nothing is refused.
    pub fn from_json(body: &[u8]) -> Result<BackendUpdate, InvalidSpawn> {
        let update: BackendUpdate = parse(body)?;
        match update.max_idle_secs {
            Some(secs) => check_max_idle(secs)?,
            None => return Err(invalid("body", "nothing to change: give max_idle_secs")),
        };
        Ok(update)
    }
}

/// The longest drain deadline accepted (a week).
pub const MAX_DRAIN_DEADLINE_SECS: u64 = 7 * 24 * 3600;

/// The body of `POST /v1/drones/{id}/drain`; an empty body is a drain without deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Seconds from now after which what still runs is terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
}

impl DrainRequest {
    /// Parses and validates a JSON body (or none).
    pub fn from_json(body: &[u8]) -> Result<DrainRequest, InvalidSpawn> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DrainRequest::default());
        }
        let request: DrainRequest = parse(body)?;
        if request
            .deadline_secs
            .is_some_and(|secs| secs > MAX_DRAIN_DEADLINE_SECS)
        {
            return Err(invalid(
                "deadline_secs",
                format!("at most {MAX_DRAIN_DEADLINE_SECS}"),
            ));
        }
        Ok(request)
    }
}

impl SpawnRequest {
    /// Parses and validates a JSON body. Errors name the field at fault.
    pub fn from_json(body: &[u8]) -> Result<ValidSpawn, InvalidSpawn> {
        parse::<SpawnRequest>(body)?.validate()
    }

    /// Checks every field and returns the spec a drone runs.
    pub fn validate(self) -> Result<ValidSpawn, InvalidSpawn> {
        let SpawnExecutable {
            image,
            command,
            pull_policy,
            credentials,
        } = self.executable;
        match &image {
            Some(image) => check_image(image)?,
            None => {
                if command.is_empty() {
                    return Err(invalid(
                        "executable.command",
                        "must name a program to run (or give an image)",
                    ));
                }
                if command[0].is_empty() {
                    return Err(invalid("executable.command[0]", "program name is empty"));
                }
                if pull_policy.is_some() {
                    return Err(invalid(
                        "executable.pull_policy",
                        "applies to an image only",
                    ));
                }
                if credentials.is_some() {
                    return Err(invalid("executable.credentials", "apply to an image only"));
                }
                if !self.resources.is_unlimited() {
                    return Err(invalid(
                        "resources",
                        "are enforced for containers only: give an image",
                    ));
                }
            }
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
        if let Some(credentials) = &credentials {
            check_credentials(credentials)?;
        }
        check_resources(&self.resources)?;
        if let Some(path) = &self.ready_path {
            check_ready_path(path)?;
        }
        let max_idle_secs = check_max_idle(self.max_idle_secs.unwrap_or(DEFAULT_MAX_IDLE_SECS))?;
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
        Ok(ValidSpawn {
            spec: BackendSpec {
                executable: Executable {
                    image,
                    command,
                    pull_policy,
                },
                max_idle_secs,
                env: self.env,
                require_token: self.require_token,
                resources: self.resources,
                ready_path: self.ready_path,
            },
            credentials,
        })
    }
}

/// An image reference as Docker writes them (`[registry[:port]/]name[:tag][@digest]`): the
/// characters it allows, and nothing that could read as a flag.
fn check_image(image: &str) -> Result<(), InvalidSpawn> {
    let field = "executable.image";
    if image.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(invalid(field, format!("longer than {MAX_IMAGE_LEN} bytes")));
    }
    if image.starts_with(['-', '.', '/', ':', '@']) {
        return Err(invalid(field, "must start with a letter or digit"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/:@+".contains(c);
    if let Some(bad) = image.chars().find(|&c| !allowed(c)) {
        return Err(invalid(
            field,
            format!("{bad:?} is not allowed in an image reference"),
        ));
    }
    Ok(())
}

fn check_credentials(credentials: &RegistryCredentials) -> Result<(), InvalidSpawn> {
    if credentials.username.is_empty() || credentials.username.chars().any(char::is_control) {
        return Err(invalid(
            "executable.credentials.username",
            "must be non-empty, without control characters",
        ));
    }
    if credentials.password.is_empty() {
        return Err(invalid("executable.credentials.password", "is empty"));
    }
    Ok(())
}

fn check_resources(resources: &Resources) -> Result<(), InvalidSpawn> {
    if let Some(memory) = resources.memory_bytes {
        if !(MIN_MEMORY_BYTES..=i64::MAX as u64).contains(&memory) {
            return Err(invalid(
                "resources.memory_bytes",
                format!("must be at least {MIN_MEMORY_BYTES} (6 MiB)"),
            ));
        }
    }
    if let Some(cpu) = resources.cpu_millis {
        // In nanoseconds of CPU per second, as Docker takes it, it must fit an i64.
        if !(MIN_CPU_MILLIS..=(i64::MAX as u64 / 1_000_000)).contains(&cpu) {
            return Err(invalid(
                "resources.cpu_millis",
                format!("must be at least {MIN_CPU_MILLIS} (a hundredth of a core)"),
            ));
        }
    }
    if let Some(pids) = resources.pids {
        if !(1..=i64::MAX as u64).contains(&pids) {
            return Err(invalid("resources.pids", "must be at least 1"));
        }
    }
    Ok(())
}

/// An absolute path, in the characters a request target may hold unescaped.
fn check_ready_path(path: &str) -> Result<(), InvalidSpawn> {
    let ok = path.starts_with('/')
        && path.len() <= MAX_READY_PATH_LEN
        && path.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "ready_path",
            format!(
                "must be an absolute path of at most {MAX_READY_PATH_LEN} visible ASCII characters"
            ),
        ))
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
        .expect("valid body")
        .spec;
        assert_eq!(spec.executable.command, ["my-server", "--flag"]);
        assert_eq!(spec.max_idle_secs, 30);
        assert_eq!(spec.env.get("K").map(String::as_str), Some("V"));
    }

    #[test]
    fn defaults_the_idle_timeout() {
        let spec =
            SpawnRequest::from_json(br#"{"executable": {"command": ["x"]}}"#).expect("valid body");
        assert_eq!(spec.spec.max_idle_secs, DEFAULT_MAX_IDLE_SECS);
        assert_eq!(
            spec.spec.executable.executor(),
            crate::messages::ExecutorKind::Process
        );
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

    #[test]
    fn accepts_the_documented_container_body_and_splits_off_the_credentials() {
        let body =
            br#"{"executable": {"image": "127.0.0.1:5000/team/app:v1", "command": ["serve", "--x"],
            "pull_policy": "if_not_present", "credentials": {"username": "u", "password": "p4ss"}},
            "resources": {"memory_bytes": 268435456, "cpu_millis": 500, "pids": 64},
            "max_idle_secs": 30, "env": {"K": "V"}, "ready_path": "/healthz"}"#;
        let valid = SpawnRequest::from_json(body).expect("valid body");
        let spec = &valid.spec;
        assert_eq!(
            spec.executable.executor(),
            crate::messages::ExecutorKind::Docker
        );
        assert_eq!(
            spec.executable.image.as_deref(),
            Some("127.0.0.1:5000/team/app:v1")
        );
        assert_eq!(spec.executable.command, ["serve", "--x"]);
        assert_eq!(spec.executable.pull_policy, Some(PullPolicy::IfNotPresent));
        assert_eq!(spec.resources.memory_bytes, Some(268_435_456));
        assert_eq!(spec.resources.cpu_millis, Some(500));
        assert_eq!(spec.resources.pids, Some(64));
        assert_eq!(spec.ready_path.as_deref(), Some("/healthz"));
        assert_eq!(
            valid.credentials.as_ref().map(|c| c.password.as_str()),
            Some("p4ss")
        );
        // The spec (stored, reported, shown) cannot hold the password at all.
        let stored = serde_json::to_string(spec).expect("serializes");
        assert!(!stored.contains("p4ss"), "{stored}");
        assert!(!format!("{valid:?}").contains("p4ss"));
    }

    #[test]
    fn an_image_needs_no_command_and_a_process_needs_one() {
        let valid = SpawnRequest::from_json(br#"{"executable": {"image": "app"}}"#)
            .expect("an image alone is enough");
        assert!(valid.spec.executable.command.is_empty());
        assert_eq!(field_of(r#"{"executable": {}}"#), "executable.command");
    }

    #[test]
    fn container_fields_are_refused_for_a_process_and_bad_values_named() {
        let cases = [
            (
                r#"{"executable": {"command": ["x"], "pull_policy": "always"}}"#,
                "executable.pull_policy",
            ),
            (
                r#"{"executable": {"command": ["x"], "credentials": {"username": "u", "password": "p"}}}"#,
                "executable.credentials",
            ),
            (
                r#"{"executable": {"command": ["x"]}, "resources": {"pids": 5}}"#,
                "resources",
            ),
            (
                r#"{"executable": {"image": "app", "pull_policy": "sometimes"}}"#,
                "executable.pull_policy",
            ),
            (r#"{"executable": {"image": ""}}"#, "executable.image"),
            (
                r#"{"executable": {"image": "-v /:/host"}}"#,
                "executable.image",
            ),
            (
                r#"{"executable": {"image": "app name"}}"#,
                "executable.image",
            ),
            (
                r#"{"executable": {"image": "app", "credentials": {"username": "", "password": "p"}}}"#,
                "executable.credentials.username",
            ),
            (
                r#"{"executable": {"image": "app", "credentials": {"username": "u", "password": ""}}}"#,
                "executable.credentials.password",
            ),
            (
                r#"{"executable": {"image": "app"}, "resources": {"memory_bytes": 1024}}"#,
                "resources.memory_bytes",
            ),
            (
                r#"{"executable": {"image": "app"}, "resources": {"cpu_millis": 1}}"#,
                "resources.cpu_millis",
            ),
            (
                r#"{"executable": {"image": "app"}, "resources": {"cpu_millis": 18446744073709551615}}"#,
                "resources.cpu_millis",
            ),
            (
                r#"{"executable": {"image": "app"}, "resources": {"pids": 0}}"#,
                "resources.pids",
            ),
            (
                r#"{"executable": {"image": "app"}, "resources": {"disk": 1}}"#,
                "resources.disk",
            ),
            (
                r#"{"executable": {"image": "app"}, "ready_path": "healthz"}"#,
                "ready_path",
            ),
            (
                r#"{"executable": {"image": "app"}, "ready_path": "/a b"}"#,
                "ready_path",
            ),
        ];
        for (body, field) in cases {
            let got = field_of(body);
            assert!(
                got.starts_with(field),
                "{body}: named {got}, expected {field}"
            );
        }
    }

    #[test]
    fn drain_requests_are_checked() {
        assert_eq!(DrainRequest::from_json(b" "), Ok(DrainRequest::default()));
        let timed = DrainRequest::from_json(br#"{"deadline_secs": 30}"#).expect("valid");
        assert_eq!(timed.deadline_secs, Some(30));
        for (body, field) in [
            (&br#"{"deadline_secs": -1}"#[..], "deadline_secs"),
            (br#"{"deadline_secs": 999999999}"#, "deadline_secs"),
            (br#"{"deadline": 5}"#, "deadline"),
            (b"nope", "body"),
        ] {
            let error = DrainRequest::from_json(body).expect_err("refused");
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn updates_are_checked() {
        let update = BackendUpdate::from_json(br#"{"max_idle_secs": 5}"#).expect("valid");
        assert_eq!(update.max_idle_secs, Some(5));
        for (body, field) in [
            (&br#"{"max_idle_secs": 0}"#[..], "max_idle_secs"),
            (br#"{"max_idle_secs": "5"}"#, "max_idle_secs"),
            (br#"{}"#, "body"),
            (br#"{"image": "x"}"#, "image"),
        ] {
            let error = BackendUpdate::from_json(body).expect_err("refused");
            assert_eq!(error.field, field, "{error}");
        }
    }
}
