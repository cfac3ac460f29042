//! Getting a backend's image onto the engine by its pull policy. The engine's own messages
//! (no such image, bad credentials, unreachable registry) are what the backend's
//! `error_loading` says; the credentials go to the engine with the pull and nowhere else.

use crate::executor::{LaunchError, PullSink};
use crate::limits::PULL_PROGRESS_INTERVAL;
use bollard::auth::DockerCredentials;
use bollard::models::CreateImageInfo;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use plane_protocol::messages::{PullPolicy, PullProgress};
use plane_protocol::registry::RegistryCredentials;
use std::collections::HashMap;
use std::time::Instant;
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
    progress: Option<&PullSink>,
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
        PullPolicy::IfNotPresent | PullPolicy::Always => {
            pull(docker, image, credentials, progress).await
        }
    }
}

async fn pull(
    docker: &Docker,
    image: &str,
    credentials: Option<&RegistryCredentials>,
    sink: Option<&PullSink>,
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
    let mut steps = docker.create_image(Some(options), None, auth);
    let mut layers = Layers::default();
    let mut told = Instant::now() - PULL_PROGRESS_INTERVAL;
    while let Some(step) = steps.next().await {
        match step {
            Ok(step) => {
                debug!(image, status = ?step.status, "pull");
                if layers.record(&step) && told.elapsed() >= PULL_PROGRESS_INTERVAL {
                    told = Instant::now();
                    if let Some(sink) = sink {
                        sink.send_replace(Some(layers.progress()));
                    }
                }
            }
            Err(error) => {
                return Err(LaunchError::Image {
                    image: image.to_string(),
                    message: format!("pull failed: {}", engine_message(&error)),
                })
            }
        }
    }
    if let Some(sink) = sink {
        sink.send_replace(Some(layers.progress()));
    }
    Ok(())
}

/// The layers of a pull as the engine's progress messages describe them, by layer id.
#[derive(Default)]
struct Layers {
    layers: HashMap<String, Layer>,
}

#[derive(Default)]
struct Layer {
    current: u64,
    total: u64,
    done: bool,
}

impl Layers {
    /// Takes one progress message; says whether the figures changed.
    fn record(&mut self, step: &CreateImageInfo) -> bool {
        let (Some(id), Some(status)) = (&step.id, &step.status) else {
            return false;
        };
        // "v1: Pulling from team/app" names the tag, not a layer.
        if status.starts_with("Pulling from") {
            return false;
        }
        let layer = self.layers.entry(id.clone()).or_default();
        let detail = step.progress_detail.as_ref();
        let number = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
        match status.as_str() {
            "Downloading" => {
                if let Some(total) = number(detail.and_then(|d| d.total)) {
                    layer.total = total;
                }
                if let Some(current) = number(detail.and_then(|d| d.current)) {
                    layer.current = current;
                }
            }
            "Verifying Checksum" | "Download complete" | "Extracting" => {
                layer.current = layer.total;
            }
            "Pull complete" | "Already exists" => {
                layer.current = layer.total;
                layer.done = true;
            }
            _ => {}
        }
        true
    }

    fn progress(&self) -> PullProgress {
        PullProgress {
            layers_done: self.layers.values().filter(|l| l.done).count() as u32,
            layers_total: self.layers.len() as u32,
            bytes_done: self.layers.values().map(|l| l.current).sum(),
            bytes_total: self.layers.values().map(|l| l.total).sum(),
        }
    }
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
    use bollard::models::ProgressDetail;

    fn step(id: &str, status: &str, current: Option<i64>, total: Option<i64>) -> CreateImageInfo {
        CreateImageInfo {
            id: Some(id.to_string()),
            status: Some(status.to_string()),
            progress_detail: Some(ProgressDetail { current, total }),
            ..CreateImageInfo::default()
        }
    }

    #[test]
    fn layers_add_up_as_the_engine_reports_them() {
        let mut layers = Layers::default();
        assert!(!layers.record(&step("v1", "Pulling from team/app", None, None)));
        layers.record(&step("a", "Pulling fs layer", None, None));
        layers.record(&step("b", "Already exists", None, None));
        layers.record(&step("a", "Downloading", Some(100), Some(400)));
        assert_eq!(
            layers.progress(),
            PullProgress {
                layers_done: 1,
                layers_total: 2,
                bytes_done: 100,
                bytes_total: 400
            }
        );
        layers.record(&step("a", "Download complete", None, None));
        layers.record(&step("a", "Pull complete", None, None));
        let done = layers.progress();
        assert_eq!((done.layers_done, done.bytes_done), (2, 400));
    }

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
