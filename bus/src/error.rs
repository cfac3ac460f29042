//! What can go wrong on the bus, and where. Both implementations return these same variants for the
//! same situations, so callers (and the contract tests) never need to know which bus they are on.

/// The underlying cause of a failure reported by the NATS client.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed publish, subscribe, request or connection.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The first connection to the NATS server failed (later ones are retried by the client).
    #[error("connecting to NATS at {url} failed")]
    Connect {
        url: String,
        #[source]
        source: Source,
    },
    /// The subject is empty or contains whitespace, or (to subscribe) has an empty token or a
    /// `>` that is not the last token.
    #[error("invalid subject {subject:?}")]
    InvalidSubject { subject: String },
    /// The queue group name is empty or contains whitespace.
    #[error("invalid queue group {group:?} for subject {subject}")]
    InvalidQueueGroup { subject: String, group: String },
    /// Handing a message to the bus failed.
    #[error("publishing to {subject} failed")]
    Publish {
        subject: String,
        #[source]
        source: Source,
    },
    /// Registering interest in a subject failed.
    #[error("subscribing to {subject} failed")]
    Subscribe {
        subject: String,
        #[source]
        source: Source,
    },
    /// The payload is larger than the bus carries ([`crate::Bus::max_payload`]).
    #[error("payload of {size} bytes for {subject} exceeds the bus maximum of {max} bytes")]
    PayloadTooLarge {
        subject: String,
        size: usize,
        max: usize,
    },
    /// Nobody subscribes to the subject of a request: reported at once, not after the timeout.
    #[error("no responders for request on {subject}")]
    NoResponders { subject: String },
    /// Someone subscribes to the subject of a request, but no answer came in time.
    #[error("request on {subject} timed out")]
    Timeout { subject: String },
    /// A request failed for another reason (connection closed, payload too large, ...).
    #[error("request on {subject} failed")]
    Request {
        subject: String,
        #[source]
        source: Source,
    },
    /// [`crate::Bus::respond`] on a message that was published, not requested.
    #[error("message on {subject} has no reply subject to respond to")]
    NoReplySubject { subject: String },
    /// Waiting for the server to process everything sent so far failed.
    #[error("flushing the NATS connection failed")]
    Flush {
        #[source]
        source: Source,
    },
    /// The bus was closed with [`crate::Bus::close`].
    #[error("the bus is closed")]
    Closed,
    /// A typed message could not be serialised.
    #[error("encoding a message for {subject} failed")]
    Encode {
        subject: String,
        #[source]
        source: serde_json::Error,
    },
    /// A payload is not the JSON message expected on its subject.
    #[error("decoding a message from {subject} failed")]
    Decode {
        subject: String,
        #[source]
        source: serde_json::Error,
    },
    /// A key-value operation failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// Opening or reading a log failed.
    #[error("{op} of log {log} failed")]
    Log {
        log: String,
        op: &'static str,
        #[source]
        source: Source,
    },
}

/// A failed key-value operation.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The bucket name is empty or has characters other than `A-Za-z0-9_-`.
    #[error("invalid bucket name {bucket:?}")]
    InvalidBucket { bucket: String },
    /// Opening or creating the bucket failed.
    #[error("opening KV bucket {bucket} failed")]
    Open {
        bucket: String,
        #[source]
        source: Source,
    },
    /// The key is empty, starts or ends with `.`, or has characters other than `A-Za-z0-9-/_=.`
    /// (for a watch: is not a valid subject pattern).
    #[error("invalid key {key:?} in KV bucket {bucket}")]
    InvalidKey { bucket: String, key: String },
    /// `create` of a key that has a live value.
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// `update` with a revision that is not the key's latest one.
    #[error("key {key} has changed since the revision given (compare-and-set failed)")]
    WrongRevision { key: String },
    /// The value is larger than the bus carries ([`crate::Bus::max_payload`]).
    #[error("value of {size} bytes for key {key} in KV bucket {bucket} exceeds the maximum of {max} bytes")]
    ValueTooLarge {
        bucket: String,
        key: String,
        size: usize,
        max: usize,
    },
    /// The operation reached the store but failed there, or did not reach it.
    #[error("{op} of key {key} in KV bucket {bucket} failed")]
    Store {
        op: &'static str,
        bucket: String,
        key: String,
        #[source]
        source: Source,
    },
    /// The bus the bucket belongs to was closed.
    #[error("KV bucket {bucket} is closed")]
    Closed { bucket: String },
    /// A typed value could not be serialised.
    #[error("encoding the value of key {key} in KV bucket {bucket} failed")]
    Encode {
        bucket: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A stored value is not the JSON expected under its key.
    #[error("decoding the value of key {key} in KV bucket {bucket} failed")]
    Decode {
        bucket: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}
