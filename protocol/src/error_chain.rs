//! Errors across Plane keep their cause in `source()` rather than repeating it in their message
//! (so `anyhow`'s `{:#}` prints each cause once). Where one string must carry the whole story (an
//! API error body, a state report's message, a NACK), this joins the chain.

use std::error::Error;

/// `outer: inner: innermost`.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    std::iter::successors(Some(error), |e| (*e).source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_every_cause_once() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&error), "outer: inner");
    }
}
