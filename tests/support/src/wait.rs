//! Waiting for something outside the test to become true (a process to die, a state to show up
//! in a listing) when it offers no event to await: a deadline loop with a short backoff.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// First pause between attempts; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between attempts, so a condition is noticed at most this late.
pub const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Calls `f` until it returns `Ok(Some(value))`, then returns the value. `Ok(None)` means "not
/// yet" and `Err` means "not yet, and here is why": both are retried. After `timeout` it fails
/// with a message naming `what` and the last error. An attempt still running at the deadline is
/// cancelled (dropped).
pub async fn eventually<F, Fut, T>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = MIN_BACKOFF;
    let mut last_error = None;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => last_error = Some(error),
            Err(_) => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}: attempt {attempts} was still running")
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(match last_error {
                Some(error) => error.context(format!(
                    "timed out after {timeout:?} ({attempts} attempts) waiting for {what}; last error"
                )),
                None => anyhow::anyhow!("timed out after {timeout:?} ({attempts} attempts) waiting for {what}"),
            });
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_success_and_retries_errors() {
        let calls = AtomicU32::new(0);
        let value = eventually(Duration::from_secs(5), "the third call", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(None),
                1 => anyhow::bail!("not yet"),
                n => Ok(Some(n)),
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_naming_what_and_the_last_error() {
        let started = Instant::now();
        let error = eventually(Duration::from_secs(2), "the moon to turn blue", || async {
            anyhow::bail!("it is still grey")
        })
        .await
        .map(|(): ()| ())
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("the moon to turn blue"), "{message}");
        assert!(message.contains("it is still grey"), "{message}");
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn cancels_an_attempt_that_outlives_the_deadline() {
        let error = eventually(Duration::from_secs(1), "a hung call", || async {
            std::future::pending::<anyhow::Result<Option<()>>>().await
        })
        .await
        .unwrap_err();
        assert!(error.to_string().contains("still running"), "{error}");
    }
}
