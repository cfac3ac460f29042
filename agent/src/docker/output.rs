//! A container's output, followed from the engine (`logs` with `follow`) into the backend's log,
//! line by line: the engine hands over what the container wrote in frames that usually hold one
//! line each, but may split a long line or join short ones, so lines are cut here.

use crate::docker::Engine;
use crate::limits::MAX_LOG_LINE_BYTES;
use crate::logs::BackendLog;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;
use plane_protocol::messages::LogSource;
use std::sync::Arc;
use tracing::debug;

/// Follows the container `name`'s output from `since` (Unix seconds; 0: from its start) until
/// the engine ends the stream (the container stopped or went).
pub(crate) fn follow(engine: Arc<Engine>, name: String, log: BackendLog, since: i32) {
    tokio::spawn(async move {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .since(since)
            .build();
        let mut frames = engine.docker.logs(&name, Some(options));
        let mut stdout = Lines::default();
        let mut stderr = Lines::default();
        while let Some(frame) = frames.next().await {
            let (lines, source, message) = match frame {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    (&mut stdout, LogSource::Stdout, message)
                }
                Ok(LogOutput::StdErr { message }) => (&mut stderr, LogSource::Stderr, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(error) => {
                    debug!(container = %name, %error, "output stream ended");
                    break;
                }
            };
            for line in lines.push(&message) {
                log.output(source, &line);
            }
        }
        for (lines, source) in [(stdout, LogSource::Stdout), (stderr, LogSource::Stderr)] {
            if let Some(rest) = lines.rest() {
                log.output(source, &rest);
            }
        }
    });
}

/// Cuts a byte stream into lines (and overlong lines into parts of [`MAX_LOG_LINE_BYTES`]).
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// The lines `bytes` completes.
    fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut complete = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                complete.push(std::mem::take(&mut self.partial));
            } else {
                self.partial.push(byte);
                if self.partial.len() >= MAX_LOG_LINE_BYTES {
                    complete.push(std::mem::take(&mut self.partial));
                }
            }
        }
        complete
    }

    /// What is left after the last end of line.
    fn rest(self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then_some(self.partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_across_frames() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"one\ntw"), vec![b"one".to_vec()]);
        assert_eq!(
            lines.push(b"o\n\nthree"),
            vec![b"two".to_vec(), b"".to_vec()]
        );
        assert_eq!(lines.rest(), Some(b"three".to_vec()));
        let mut long = Lines::default();
        let parts = long.push(&vec![b'x'; MAX_LOG_LINE_BYTES * 2 + 1]);
        assert_eq!(parts.len(), 2);
        assert_eq!(long.rest(), Some(b"x".to_vec()));
    }
}
