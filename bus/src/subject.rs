//! NATS subject rules, written once for both buses: which subjects, queue groups, bucket names and
//! keys are valid, and which subjects a wildcard pattern (`*` one token, `>` one or more trailing
//! tokens) matches. Validating here, before dispatch, makes both buses reject the same names the
//! same way instead of NATS failing later and asynchronously on the server.

/// Characters that would break NATS protocol framing.
fn has_whitespace(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// A subject a message can be published to: not empty, no whitespace (what the NATS client
/// checks; tokens are taken literally, so `*` in a published subject is just a character).
pub(crate) fn valid_publish(subject: &str) -> bool {
    !subject.is_empty() && !has_whitespace(subject)
}

/// A subject pattern one can subscribe to: non-empty tokens, no whitespace, and `>` only as the
/// last token.
pub(crate) fn valid_pattern(pattern: &str) -> bool {
    if pattern.is_empty() || has_whitespace(pattern) {
        return false;
    }
    let mut tokens = pattern.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || (token == ">" && tokens.peek().is_some()) {
            return false;
        }
    }
    true
}

/// A queue group name: not empty, no whitespace.
pub(crate) fn valid_queue_group(group: &str) -> bool {
    !group.is_empty() && !has_whitespace(group)
}

/// A KV bucket name (JetStream's rule): `[A-Za-z0-9_-]+`.
pub(crate) fn valid_bucket(bucket: &str) -> bool {
    !bucket.is_empty()
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.')
}

/// A KV key: JetStream's rule (`[-/_=.A-Za-z0-9]+`, not starting or ending with `.`), and no
/// empty token (`a..b`), which the server would not route.
pub(crate) fn valid_key(key: &str) -> bool {
    valid_pattern(key) && key.bytes().all(key_byte)
}

/// A key pattern to watch: key characters plus the `*` and `>` wildcards, as a valid pattern.
pub(crate) fn valid_key_pattern(pattern: &str) -> bool {
    valid_pattern(pattern)
        && pattern
            .bytes()
            .all(|b| key_byte(b) || b == b'*' || b == b'>')
}

/// Whether `subject` is matched by `pattern` under NATS wildcard rules. Wildcards count only as
/// whole tokens; `a*` is a literal token.
pub(crate) fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        if token == ">" {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(s) if token == "*" || token == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("*.b", "a.b"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "a"));
        assert!(matches("*.*.>", "a.b.c"));
        assert!(!matches("*.*.>", "a.b"));
        assert!(!matches("a*", "ab"));
        assert!(matches("a*", "a*"));
    }

    #[test]
    fn patterns_are_validated() {
        assert!(valid_pattern("a.*.>"));
        assert!(valid_pattern(">"));
        assert!(!valid_pattern(""));
        assert!(!valid_pattern("a..b"));
        assert!(!valid_pattern(".a"));
        assert!(!valid_pattern("a."));
        assert!(!valid_pattern("a.>.b"));
        assert!(!valid_pattern("a b"));
        assert!(valid_publish("a.b"));
        assert!(!valid_publish(""));
        assert!(!valid_publish("a\nb"));
        assert!(!valid_queue_group(""));
        assert!(!valid_queue_group("a b"));
    }

    #[test]
    fn keys_and_buckets_follow_jetstream() {
        assert!(valid_bucket("plane_backends-1"));
        assert!(!valid_bucket("a.b"));
        assert!(!valid_bucket(""));
        assert!(valid_key("backend/abc=.x-y_z"));
        assert!(!valid_key(".a"));
        assert!(!valid_key("a."));
        assert!(!valid_key("a b"));
        assert!(!valid_key("a*"));
        assert!(!valid_key(""));
        assert!(!valid_key("a..b"));
        assert!(valid_key_pattern(">"));
        assert!(valid_key_pattern("drone.*"));
        assert!(!valid_key_pattern("a..b"));
        assert!(!valid_key_pattern("a b"));
    }
}
