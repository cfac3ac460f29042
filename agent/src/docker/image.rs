//! Getting a backend's image onto the engine by its pull policy. The engine's own messages
//! (no such image, bad credentials, unreachable registry) are what the backend's
//! `error_loading` says; the credentials go to the engine with the pull and nowhere else.

use crate::executor::LaunchError;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use plane_protocol::messages::PullPolicy;
use plane_protocol::registry::RegistryCredentials;
use tracing::{debug, info};

/// An image reference split as the engine's pull takes it: repository, and tag or digest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reference<'a> {
    pub repository: &'a str,
    /// `latest` when the reference names neither tag nor digest (the engine would otherwise
    /// pull every tag).
    pub tag: &'a str,
}

impl<'a> Reference<'a> {
    pub(crate) fn parse(image: &'a str) -> Reference<'a> {
        if let Some((repository, digest)) = image.split_once('@') {
            return Reference {
                repository,
                tag: digest,
            };
        }
        // A colon after the last slash starts the tag; one before it is a registry's port.
        let name_start = image.rfind('/').map_or(0, |i| i + 1);
        match image[name_start..].rfind(':') {
            Some(at) => Reference {
                repository: &image[..name_start + at],
                tag: &image[name_start + at + 1..],
            },
            None => Reference {
                repository: image,
                tag: "latest",
            },
        }
    }

    /// The registry a reference points at, when it names one (`host:port/…`, `host.tld/…`,
    /// `localhost/…`): where credentials are for.
    pub(crate) fn registry(&self) -> Option<&'a str> {
        let (first, _) = self.repository.split_once('/')?;
        (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
    }
}

/// Makes sure the engine has `image`, pulling it as `policy` says.
pub(crate) async fn ensure(
    docker: &Docker,
    image: &str,
    policy: PullPolicy,
    credentials: Option<&RegistryCredentials>,
) -> Result<(), LaunchError> {
    let present = || async { docker.inspect_image(image).await.is_ok() };
    match policy {
        PullPolicy::Never => {
            if present().await {
                Ok(())
            } else {
                Err(LaunchError::Image {
                    image: image.to_string(),
                    message: "not on this drone's engine, and the pull policy is never".into(),
                })
            }
        }
        PullPolicy::IfNotPresent if present().await => Ok(()),
        PullPolicy::IfNotPresent | PullPolicy::Always => pull(docker, image, credentials).await,
    }
}

async fn pull(
    docker: &Docker,
    image: &str,
    credentials: Option<&RegistryCredentials>,
) -> Result<(), LaunchError> {
    let reference = Reference::parse(image);
    let options = CreateImageOptionsBuilder::default()
        .from_image(reference.repository)
        .tag(reference.tag)
        .build();
    let auth = credentials.map(|c| DockerCredentials {
        username: Some(c.username.clone()),
        password: Some(c.password.clone()),
        serveraddress: reference.registry().map(str::to_string),
        ..DockerCredentials::default()
    });
    info!(image, "pulling image");
    let mut progress = docker.create_image(Some(options), None, auth);
    while let Some(step) = progress.next().await {
        match step {
            Ok(step) => debug!(image, status = ?step.status, "pull"),
            Err(error) => {
                return Err(LaunchError::Image {
                    image: image.to_string(),
                    message: format!("pull failed: {}", engine_message(&error)),
                })
            }
        }
    }
    Ok(())
}

/// What the engine said, without bollard's wrapping.
pub(crate) fn engine_message(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references_as_the_engine_does() {
        let cases = [
            ("app", "app", "latest", None),
            ("app:v1", "app", "v1", None),
            ("team/app", "team/app", "latest", None),
            (
                "127.0.0.1:5000/app",
                "127.0.0.1:5000/app",
                "latest",
                Some("127.0.0.1:5000"),
            ),
            (
                "127.0.0.1:5000/t/app:v2",
                "127.0.0.1:5000/t/app",
                "v2",
                Some("127.0.0.1:5000"),
            ),
            (
                "reg.example/app@sha256:ab",
                "reg.example/app",
                "sha256:ab",
                Some("reg.example"),
            ),
            ("localhost/app:1", "localhost/app", "1", Some("localhost")),
        ];
        for (image, repository, tag, registry) in cases {
            let reference = Reference::parse(image);
            assert_eq!(reference.repository, repository, "{image}");
            assert_eq!(reference.tag, tag, "{image}");
            assert_eq!(reference.registry(), registry, "{image}");
        }
    }
}
