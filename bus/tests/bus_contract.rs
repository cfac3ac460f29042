//! The bus contract: every behaviour Plane relies on, written once and run against both the
//! in-memory bus and a real `nats-server` (one per test, started by the test). If the two ever
//! disagree, a test here fails for one of them.
//!
//! Tests wait on events (a fence message after the ones under test, a watch change, a reply),
//! never on sleeps, and every await that could hang is bounded by [`within`].

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use plane_bus::{Bus, BusError, KvChange, KvError, LogConfig, LogReader, Message, Subscription};
use plane_test_support::NatsServer;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .with_context(|| format!("timed out after {WAIT:?}: {what}"))
}

/// A world of buses that see each other: clones of one in-memory bus, or separate connections
/// to one nats-server (like a controller and a drone).
struct World {
    first: Bus,
    nats: Option<NatsServer>,
}

impl World {
    fn memory() -> Self {
        World {
            first: Bus::in_memory(),
            nats: None,
        }
    }

    async fn nats() -> anyhow::Result<Self> {
        let server = NatsServer::start()?;
        let first = within("connect", Bus::connect(&server.url())).await??;
        Ok(World {
            first,
            nats: Some(server),
        })
    }

    /// Another participant on the same bus.
    async fn bus(&self) -> anyhow::Result<Bus> {
        match &self.nats {
            None => Ok(self.first.clone()),
            Some(server) => Ok(within("connect", Bus::connect(&server.url())).await??),
        }
    }
}

/// Emits `memory_NAME` and `nats_NAME` tests running `NAME(world)` on each bus.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::World::memory()).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::World::nats().await?).await
                }
            )*
        }
    };
}

contract!(
    wildcards_route_to_matching_subscribers,
    queue_group_delivers_each_message_to_one_member,
    request_reply_round_trips_json,
    request_without_responders_fails_at_once,
    request_to_silent_responder_times_out,
    respond_needs_a_reply_subject,
    garbage_payload_is_a_decode_error,
    invalid_names_are_rejected,
    close_ends_subscriptions,
    publish_then_drop_still_delivers,
    payloads_over_the_limit_are_refused,
    kv_create_refuses_a_live_key,
    kv_update_is_compare_and_set,
    kv_deleted_key_reads_as_none_and_can_be_created_again,
    kv_entries_lists_live_keys_only,
    kv_bucket_is_shared_between_participants,
    kv_garbage_value_is_a_decode_error,
    kv_watch_sees_later_puts_and_deletes,
    kv_concurrent_creates_have_one_winner,
    kv_expiring_values_age_out_unless_rewritten,
    log_keeps_the_last_messages_of_each_subject_in_order,
    log_follow_gives_the_kept_then_the_new,
    log_refuses_bad_names,
    log_drops_the_oldest_past_its_byte_limit,
);

async fn next(sub: &mut Subscription) -> anyhow::Result<Message> {
    within("next message", sub.next())
        .await?
        .context("subscription ended")
}

/// Reads messages until one with payload `fence`, returning the subjects before it.
async fn subjects_until_fence(sub: &mut Subscription) -> anyhow::Result<Vec<String>> {
    let mut subjects = Vec::new();
    loop {
        let msg = next(sub).await?;
        if msg.payload == "fence" {
            return Ok(subjects);
        }
        subjects.push(msg.subject);
    }
}

async fn wildcards_route_to_matching_subscribers(world: World) -> anyhow::Result<()> {
    let subscriber = world.bus().await?;
    let publisher = world.bus().await?;
    let mut star = subscriber.subscribe("t.*.x").await?;
    let mut tail = subscriber.subscribe("t.>").await?;
    let mut exact = subscriber.subscribe("t.a.x").await?;
    for subject in ["t.a.x", "t.b.x", "t.b.y", "u.a.x", "t", "t.a.x.y", "t.a"] {
        publisher.publish(subject, Bytes::from_static(b"m")).await?;
    }
    // Messages from one publisher arrive in order: once the fence (matched by all three) is
    // in, nothing else is coming.
    publisher.publish("t.a.x", "fence".into()).await?;
    assert_eq!(subjects_until_fence(&mut star).await?, ["t.a.x", "t.b.x"]);
    assert_eq!(
        subjects_until_fence(&mut tail).await?,
        ["t.a.x", "t.b.x", "t.b.y", "t.a.x.y", "t.a"]
    );
    assert_eq!(subjects_until_fence(&mut exact).await?, ["t.a.x"]);
    Ok(())
}

async fn queue_group_delivers_each_message_to_one_member(world: World) -> anyhow::Result<()> {
    const N: usize = 40;
    let member_bus = world.bus().await?;
    let publisher = world.bus().await?;
    let mut members = [
        member_bus.queue_subscribe("work.*", "workers").await?,
        world
            .bus()
            .await?
            .queue_subscribe("work.*", "workers")
            .await?,
    ];
    let mut watcher = member_bus.subscribe("work.*").await?;
    for i in 0..N {
        publisher.publish("work.item", i.to_string().into()).await?;
    }
    // A plain subscriber gets everything.
    for i in 0..N {
        assert_eq!(next(&mut watcher).await?.payload, i.to_string());
    }
    // Fences go to one member each; once both members have had one, each has received
    // everything that was meant for it.
    let mut seen: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let mut fenced = [false, false];
    while !(fenced[0] && fenced[1]) {
        publisher.publish("work.item", "fence".into()).await?;
        let ([a, b], [fa, fb]) = (&mut members, &mut fenced);
        let (msg, index) = within("a member message", async {
            tokio::select! {
                msg = a.next(), if !*fa => (msg, 0),
                msg = b.next(), if !*fb => (msg, 1),
            }
        })
        .await?;
        let msg = msg.context("member subscription ended")?;
        let payload = String::from_utf8(msg.payload.to_vec())?;
        if payload == "fence" {
            fenced[index] = true;
        } else {
            seen[index].push(payload);
        }
        // Drain what a fenced member still holds (only fences may follow its first one).
        for (i, member) in members.iter_mut().enumerate() {
            if fenced[i] {
                while let Ok(Some(msg)) = tokio::time::timeout(Duration::ZERO, member.next()).await
                {
                    ensure!(
                        msg.payload == "fence",
                        "member {i} got data after its fence"
                    );
                }
            }
        }
    }
    let all: Vec<&String> = seen.iter().flatten().collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), N, "each message to exactly one member: {seen:?}");
    assert_eq!(unique.len(), N, "no message to two members: {seen:?}");
    assert!(
        seen.iter().all(|s| !s.is_empty()),
        "both members share the work: {seen:?}"
    );
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Ask {
    n: u32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Answer {
    doubled: u32,
    by: String,
}

async fn request_reply_round_trips_json(world: World) -> anyhow::Result<()> {
    let responder = world.bus().await?;
    let requester = world.bus().await?;
    let mut requests = responder.queue_subscribe("svc.double", "svc").await?;
    let serve = tokio::spawn(async move {
        for _ in 0..3 {
            let msg = next(&mut requests).await?;
            let ask: Ask = msg.decode()?;
            let answer = Answer {
                doubled: ask.n * 2,
                by: msg.subject.clone(),
            };
            responder.respond_json(&msg, &answer).await?;
        }
        anyhow::Ok(())
    });
    for n in [1, 20, 300] {
        let answer: Answer = within(
            "request",
            requester.request_json("svc.double", &Ask { n }, WAIT),
        )
        .await??;
        assert_eq!(
            answer,
            Answer {
                doubled: n * 2,
                by: "svc.double".into()
            }
        );
    }
    within("responder", serve).await???;
    Ok(())
}

async fn request_without_responders_fails_at_once(world: World) -> anyhow::Result<()> {
    let bus = world.bus().await?;
    // Interest elsewhere must not count.
    let _other = bus.subscribe("svc.other").await?;
    let started = Instant::now();
    let result = within(
        "request",
        bus.request("svc.nobody", "x".into(), Duration::from_secs(5)),
    )
    .await?;
    let elapsed = started.elapsed();
    match result {
        Err(BusError::NoResponders { subject }) => assert_eq!(subject, "svc.nobody"),
        other => bail!("expected NoResponders, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    Ok(())
}

async fn request_to_silent_responder_times_out(world: World) -> anyhow::Result<()> {
    let silent = world.bus().await?;
    let requester = world.bus().await?;
    let mut requests = silent.subscribe("svc.silent").await?;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = within(
        "request",
        requester.request("svc.silent", "x".into(), timeout),
    )
    .await?;
    let elapsed = started.elapsed();
    match result {
        Err(BusError::Timeout { subject }) => assert_eq!(subject, "svc.silent"),
        other => bail!("expected Timeout, got {other:?}"),
    }
    assert!(elapsed >= timeout, "timed out early: {elapsed:?}");
    // The request did arrive, with a reply subject.
    assert!(next(&mut requests).await?.reply.is_some());
    Ok(())
}

async fn respond_needs_a_reply_subject(world: World) -> anyhow::Result<()> {
    let bus = world.bus().await?;
    let mut sub = bus.subscribe("plain").await?;
    bus.publish("plain", "x".into()).await?;
    let msg = next(&mut sub).await?;
    assert_eq!(msg.reply, None);
    match bus.respond(&msg, "y".into()).await {
        Err(BusError::NoReplySubject { subject }) => assert_eq!(subject, "plain"),
        other => bail!("expected NoReplySubject, got {other:?}"),
    }
    Ok(())
}

async fn garbage_payload_is_a_decode_error(world: World) -> anyhow::Result<()> {
    let responder = world.bus().await?;
    let bus = world.bus().await?;
    let mut sub = bus.subscribe("garbage").await?;
    bus.publish("garbage", Bytes::from_static(b"\xff{not json"))
        .await?;
    let msg = next(&mut sub).await?;
    match msg.decode::<Ask>() {
        Err(BusError::Decode { subject, .. }) => assert_eq!(subject, "garbage"),
        other => bail!("expected Decode, got {other:?}"),
    }
    // Valid JSON of the wrong shape is garbage too.
    let mut requests = responder.subscribe("svc.garbage").await?;
    let serve = tokio::spawn(async move {
        let msg = next(&mut requests).await?;
        responder.respond(&msg, "{\"n\": \"x\"}".into()).await?;
        anyhow::Ok(())
    });
    let answer = within(
        "request",
        bus.request_json::<_, Ask>("svc.garbage", &Ask { n: 1 }, WAIT),
    )
    .await?;
    assert!(matches!(answer, Err(BusError::Decode { .. })), "{answer:?}");
    within("responder", serve).await???;
    Ok(())
}

async fn invalid_names_are_rejected(world: World) -> anyhow::Result<()> {
    let bus = world.bus().await?;
    for subject in ["", "a b", "a\r\nPUB x 1"] {
        let result = bus.publish(subject, "x".into()).await;
        assert!(
            matches!(result, Err(BusError::InvalidSubject { .. })),
            "publish {subject:?}: {result:?}"
        );
    }
    for subject in ["", "a..b", "a.>.b", ".a", "a b"] {
        let result = bus.subscribe(subject).await;
        assert!(
            matches!(result, Err(BusError::InvalidSubject { .. })),
            "subscribe {subject:?}"
        );
    }
    let result = bus.queue_subscribe("a", "bad group").await;
    assert!(matches!(result, Err(BusError::InvalidQueueGroup { .. })));
    let result = bus.kv("bad.bucket").await;
    assert!(matches!(
        result,
        Err(BusError::Kv(KvError::InvalidBucket { .. }))
    ));
    let kv = bus.kv("names").await?;
    for key in ["", ".a", "a.", "a..b", "a b", "a*", "a>"] {
        let result = kv.put(key, "x".into()).await;
        assert!(
            matches!(result, Err(KvError::InvalidKey { .. })),
            "put {key:?}: {result:?}"
        );
    }
    assert!(matches!(
        kv.watch("a..b").await,
        Err(KvError::InvalidKey { .. })
    ));
    Ok(())
}

async fn close_ends_subscriptions(world: World) -> anyhow::Result<()> {
    let bus = world.bus().await?;
    let mut sub = bus.subscribe("closing").await?;
    bus.publish("closing", "last".into()).await?;
    bus.flush().await?;
    let mut watch = bus.kv("closing").await?.watch(">").await?;
    bus.close().await?;
    assert_eq!(next(&mut sub).await?.payload, "last");
    assert!(within("end of subscription", sub.next()).await?.is_none());
    assert!(within("end of KV watch", watch.next()).await?.is_none());
    Ok(())
}

async fn publish_then_drop_still_delivers(world: World) -> anyhow::Result<()> {
    let subscriber = world.bus().await?;
    let mut sub = subscriber.subscribe("last.words").await?;
    let publisher = world.bus().await?;
    publisher.publish("last.words", "bye".into()).await?;
    drop(publisher);
    assert_eq!(next(&mut sub).await?.payload, "bye");
    Ok(())
}

async fn payloads_over_the_limit_are_refused(world: World) -> anyhow::Result<()> {
    let bus = world.bus().await?;
    let max = bus.max_payload();
    assert_eq!(max, 1024 * 1024, "both buses carry nats-server's default");
    let mut sub = bus.subscribe("big").await?;
    bus.publish("big", vec![b'x'; max].into()).await?;
    assert_eq!(next(&mut sub).await?.payload.len(), max);
    let too_big = Bytes::from(vec![b'x'; max + 1]);
    match bus.publish("big", too_big.clone()).await {
        Err(BusError::PayloadTooLarge { subject, size, .. }) => {
            assert_eq!((&*subject, size), ("big", max + 1))
        }
        other => bail!("expected PayloadTooLarge, got {other:?}"),
    }
    let result = bus.request("big", too_big.clone(), WAIT).await;
    assert!(
        matches!(result, Err(BusError::PayloadTooLarge { .. })),
        "{result:?}"
    );
    let kv = bus.kv("big").await?;
    let result = kv.put("k", too_big).await;
    assert!(
        matches!(result, Err(KvError::ValueTooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(kv.get("k").await?, None);
    // The largest value the KV takes goes through every write, compare-and-set included (its
    // headers count against the same limit on NATS), and one byte more is refused the same way.
    let mut largest = max;
    while let Err(KvError::ValueTooLarge { .. }) =
        kv.put("probe", Bytes::from(vec![b'x'; largest])).await
    {
        largest -= 64;
    }
    let revision = kv.create("k", vec![b'y'; largest].into()).await?;
    kv.update("k", vec![b'z'; largest].into(), revision).await?;
    let result = kv.create("k2", vec![b'y'; largest + 64].into()).await;
    assert!(
        matches!(result, Err(KvError::ValueTooLarge { .. })),
        "{result:?}"
    );
    Ok(())
}

/// A bus that cannot connect says so at once; reconnecting is only for established buses.
#[tokio::test]
async fn nats_connect_to_nothing_fails() -> anyhow::Result<()> {
    let url = format!("nats://127.0.0.1:{}", plane_test_support::free_port()?);
    match within("connect", Bus::connect(&url)).await? {
        Err(BusError::Connect { url: failed, .. }) => assert_eq!(failed, url),
        Err(other) => bail!("expected Connect, got {other:?}"),
        Ok(_) => bail!("connected to nothing"),
    }
    Ok(())
}

/// A watch that has seen nothing yet does not replay the bucket's history when the server
/// restarts under it (async-nats recreates its consumer from the start of the stream).
#[tokio::test]
async fn nats_watch_keeps_no_history_across_a_server_restart() -> anyhow::Result<()> {
    let mut server = plane_test_support::NatsServer::start()?;
    let bus = within("connect", Bus::connect(&server.url())).await??;
    let kv = bus.kv("restart").await?;
    kv.put("old", "1".into()).await?;
    kv.put("gone", "1".into()).await?;
    kv.delete("gone").await?;
    let mut watch = kv.watch(">").await?;
    server.restart()?;
    // The client reconnects by itself; write until a write goes through.
    let revision = within("a write after the restart", async {
        loop {
            match kv.put("new", "2".into()).await {
                Ok(revision) => return revision,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    })
    .await?;
    // The consumer notices the restart by missed heartbeats, which takes a while.
    let change = tokio::time::timeout(std::time::Duration::from_secs(40), watch.next())
        .await
        .context("no change within 40 s")?
        .context("watch ended")?;
    match change {
        KvChange::Put(entry) => assert_eq!((&*entry.key, entry.revision), ("new", revision)),
        other => bail!("the watch replayed history: {other:?}"),
    }
    Ok(())
}

async fn kv_create_refuses_a_live_key(world: World) -> anyhow::Result<()> {
    let kv = world.bus().await?.kv("create").await?;
    let revision = kv.create("k", "1".into()).await?;
    match kv.create("k", "2".into()).await {
        Err(KvError::AlreadyExists { key }) => assert_eq!(key, "k"),
        other => bail!("expected AlreadyExists, got {other:?}"),
    }
    let entry = kv.get("k").await?.context("k is live")?;
    assert_eq!((entry.value, entry.revision), ("1".into(), revision));
    Ok(())
}

async fn kv_update_is_compare_and_set(world: World) -> anyhow::Result<()> {
    let kv = world.bus().await?.kv("update").await?;
    let first = kv.create("k", "1".into()).await?;
    assert!(first >= 1);
    let second = kv.update("k", "2".into(), first).await?;
    assert!(second > first);
    match kv.update("k", "3".into(), first).await {
        Err(KvError::WrongRevision { key }) => assert_eq!(key, "k"),
        other => bail!("expected WrongRevision, got {other:?}"),
    }
    assert_eq!(
        kv.get("k").await?.context("k is live")?.value,
        Bytes::from("2")
    );
    // Typed helpers carry the revision through.
    let revision = kv.put_json("k", &Ask { n: 7 }).await?;
    assert_eq!(
        kv.get_json::<Ask>("k").await?,
        Some((Ask { n: 7 }, revision))
    );
    let updated = kv.update_json("k", &Ask { n: 8 }, revision).await?;
    assert!(matches!(
        kv.update_json("k", &Ask { n: 9 }, revision).await,
        Err(KvError::WrongRevision { .. })
    ));
    assert_eq!(
        kv.get_json::<Ask>("k").await?,
        Some((Ask { n: 8 }, updated))
    );
    Ok(())
}

async fn kv_deleted_key_reads_as_none_and_can_be_created_again(world: World) -> anyhow::Result<()> {
    let kv = world.bus().await?.kv("delete").await?;
    assert_eq!(kv.get("k").await?, None);
    let created = kv.create("k", "1".into()).await?;
    kv.delete("k").await?;
    assert_eq!(kv.get("k").await?, None);
    assert_eq!(kv.get_json::<Ask>("k").await?, None);
    let recreated = kv.create_json("k", &Ask { n: 2 }).await?;
    assert!(recreated > created);
    assert_eq!(
        kv.get_json::<Ask>("k").await?,
        Some((Ask { n: 2 }, recreated))
    );
    Ok(())
}

async fn kv_entries_lists_live_keys_only(world: World) -> anyhow::Result<()> {
    let kv = world.bus().await?.kv("entries").await?;
    assert_eq!(kv.entries().await?, []);
    kv.put("a", "1".into()).await?;
    kv.put("b.x", "2".into()).await?;
    kv.put("c", "3".into()).await?;
    kv.put("a", "4".into()).await?;
    kv.delete("c").await?;
    let entries = kv.entries().await?;
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a", "b.x"]);
    for entry in &entries {
        assert_eq!(Some(entry), kv.get(&entry.key).await?.as_ref());
    }
    assert_eq!(entries[0].value, "4");
    Ok(())
}

async fn kv_bucket_is_shared_between_participants(world: World) -> anyhow::Result<()> {
    let a = world.bus().await?.kv("shared").await?;
    let b = world.bus().await?.kv("shared").await?;
    let other = world.bus().await?.kv("other").await?;
    let revision = a.put("k", "1".into()).await?;
    let entry = b.get("k").await?.context("b sees a's write")?;
    assert_eq!(entry.revision, revision);
    assert_eq!(other.get("k").await?, None);
    Ok(())
}

async fn kv_garbage_value_is_a_decode_error(world: World) -> anyhow::Result<()> {
    let kv = world.bus().await?.kv("garbage").await?;
    kv.put("k", Bytes::from_static(b"\x00\xffnot json")).await?;
    match kv.get_json::<Ask>("k").await {
        Err(KvError::Decode { key, bucket, .. }) => assert_eq!((&*key, &*bucket), ("k", "garbage")),
        other => bail!("expected Decode, got {other:?}"),
    }
    Ok(())
}

async fn next_change(watch: &mut plane_bus::KvWatch) -> anyhow::Result<KvChange> {
    within("next KV change", watch.next())
        .await?
        .context("watch ended")
}

async fn kv_watch_sees_later_puts_and_deletes(world: World) -> anyhow::Result<()> {
    let writer = world.bus().await?.kv("watch").await?;
    let kv = world.bus().await?.kv("watch").await?;
    writer.put("drone.before", "old".into()).await?;
    let mut all = kv.watch(">").await?;
    let mut drones = kv.watch("drone.*").await?;
    let put = writer.put("drone.1", "up".into()).await?;
    let other = writer.put("backend.1", "x".into()).await?;
    writer.delete("drone.1").await?;
    let changes = [
        next_change(&mut all).await?,
        next_change(&mut all).await?,
        next_change(&mut all).await?,
    ];
    let KvChange::Put(first) = &changes[0] else {
        bail!("expected the put of drone.1 first (no history), got {changes:?}");
    };
    assert_eq!(
        (&*first.key, &first.value, first.revision),
        ("drone.1", &Bytes::from("up"), put)
    );
    assert!(matches!(&changes[1], KvChange::Put(e) if e.key == "backend.1" && e.revision == other));
    let KvChange::Delete { key, revision } = &changes[2] else {
        bail!("expected the delete of drone.1, got {changes:?}");
    };
    assert_eq!(key, "drone.1");
    assert!(put < other && other < *revision, "{changes:?}");
    // The narrower watch sees only its keys; a fence proves nothing else is queued.
    writer.put("drone.fence", "f".into()).await?;
    assert_eq!(next_change(&mut drones).await?, changes[0]);
    assert_eq!(next_change(&mut drones).await?, changes[2]);
    assert!(matches!(next_change(&mut drones).await?, KvChange::Put(e) if e.key == "drone.fence"));
    Ok(())
}

async fn kv_expiring_values_age_out_unless_rewritten(world: World) -> anyhow::Result<()> {
    const MAX_AGE: Duration = Duration::from_secs(1);
    let kv = world.bus().await?.kv_expiring("expiring", MAX_AGE).await?;
    let other = world.bus().await?.kv_expiring("expiring", MAX_AGE).await?;
    let written = Instant::now();
    let old = kv.create("old", "1".into()).await?;
    kv.put("kept", "1".into()).await?;
    assert!(other.get("old").await?.is_some(), "a fresh value reads");
    // Rewrite "kept" while waiting for "old" to age out: its clock starts anew each time.
    within("the value to age out", async {
        loop {
            kv.put("kept", "again".into()).await?;
            if other.get("old").await?.is_none() {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    assert!(written.elapsed() >= MAX_AGE, "aged out early");
    assert_eq!(
        other.get("kept").await?.map(|e| e.value),
        Some(Bytes::from("again"))
    );
    assert!(!other.entries().await?.iter().any(|e| e.key == "old"));
    // An aged-out key is as if never written: a compare-and-set on its old revision fails and
    // a create succeeds.
    assert!(matches!(
        kv.update("old", "2".into(), old).await,
        Err(KvError::WrongRevision { .. })
    ));
    kv.create("old", "3".into()).await?;
    // A bucket without an age keeps its values.
    let plain = world.bus().await?.kv("lasting").await?;
    plain.put("k", "1".into()).await?;
    assert!(plain.get("k").await?.is_some());
    Ok(())
}

async fn kv_concurrent_creates_have_one_winner(world: World) -> anyhow::Result<()> {
    let a = world.bus().await?.kv("race").await?;
    let b = world.bus().await?.kv("race").await?;
    for round in 0..10 {
        let key = format!("key{round}");
        // Half the rounds race on a key that was deleted (create must still have one winner).
        if round % 2 == 1 {
            a.put(&key, "old".into()).await?;
            a.delete(&key).await?;
        }
        let (ra, rb) = within(
            "concurrent creates",
            futures::future::join(a.create(&key, "a".into()), b.create(&key, "b".into())),
        )
        .await?;
        let winner = match (ra, rb) {
            (Ok(revision), Err(KvError::AlreadyExists { .. })) => ("a", revision),
            (Err(KvError::AlreadyExists { .. }), Ok(revision)) => ("b", revision),
            other => bail!("round {round}: expected exactly one winner, got {other:?}"),
        };
        let entry = a.get(&key).await?.context("the winner's value")?;
        assert_eq!(
            (entry.value, entry.revision),
            (Bytes::from(winner.0), winner.1)
        );
    }
    Ok(())
}

fn log_config(per_subject: u64) -> LogConfig {
    LogConfig {
        subjects: "app.logs.*".to_owned(),
        per_subject,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(600),
        max_message: 1024,
    }
}

/// Every message a reader gives until it ends, as (subject, payload).
async fn read_to_end(reader: &mut LogReader) -> anyhow::Result<Vec<(String, String)>> {
    let mut all = Vec::new();
    let mut last_seq = 0;
    while let Some(entry) = within("log entry", reader.next()).await? {
        let entry = entry?;
        ensure!(
            entry.seq > last_seq,
            "sequence goes up: {} after {last_seq}",
            entry.seq
        );
        last_seq = entry.seq;
        all.push((entry.subject, String::from_utf8(entry.payload.to_vec())?));
    }
    Ok(all)
}

/// Waits until a follower of `subject` has seen `payload` (the log has kept it).
async fn kept(log: &plane_bus::Log, subject: &str, payload: &str) -> anyhow::Result<()> {
    let mut follower = within("open", log.read(subject, true)).await??;
    loop {
        let entry = within("the fence in the log", follower.next())
            .await?
            .context("follower ended")??;
        if entry.payload.as_ref() == payload.as_bytes() {
            return Ok(());
        }
    }
}

async fn log_keeps_the_last_messages_of_each_subject_in_order(world: World) -> anyhow::Result<()> {
    let log = within("open", world.first.log("plane_test_log", &log_config(3))).await??;
    let writer = world.bus().await?;
    for i in 1..=5 {
        writer
            .publish("app.logs.x", Bytes::from(format!("x{i}")))
            .await?;
    }
    writer
        .publish("app.logs.y", Bytes::from_static(b"y1"))
        .await?;
    // Not kept: outside the log's subjects, or over its size limit.
    writer
        .publish("app.other.x", Bytes::from_static(b"elsewhere"))
        .await?;
    writer
        .publish("app.logs.x", Bytes::from(vec![b'z'; 2048]))
        .await?;
    writer
        .publish("app.logs.y", Bytes::from_static(b"y2"))
        .await?;
    within("flush", writer.flush()).await??;
    kept(&log, "app.logs.y", "y2").await?;

    let mut x = within("open", log.read("app.logs.x", false)).await??;
    let x = read_to_end(&mut x).await?;
    let payloads: Vec<&str> = x.iter().map(|(_, p)| p.as_str()).collect();
    ensure!(payloads == ["x3", "x4", "x5"], "the last three of x: {x:?}");
    let mut both = within("open", log.read("app.logs.*", false)).await??;
    let both = read_to_end(&mut both).await?;
    let payloads: Vec<&str> = both.iter().map(|(_, p)| p.as_str()).collect();
    ensure!(payloads == ["x3", "x4", "x5", "y1", "y2"], "{both:?}");
    ensure!(both[3].0 == "app.logs.y", "{both:?}");
    // A subject with nothing kept ends at once.
    let mut none = within("open", log.read("app.logs.nothing", false)).await??;
    ensure!(read_to_end(&mut none).await?.is_empty());
    // Another participant opening the same log sees the same.
    let again = within(
        "open",
        world.bus().await?.log("plane_test_log", &log_config(3)),
    )
    .await??;
    let mut x = within("open", again.read("app.logs.x", false)).await??;
    ensure!(read_to_end(&mut x).await?.len() == 3);
    Ok(())
}

async fn log_follow_gives_the_kept_then_the_new(world: World) -> anyhow::Result<()> {
    let log = within(
        "open",
        world.first.log("plane_follow_log", &log_config(100)),
    )
    .await??;
    let writer = world.bus().await?;
    writer
        .publish("app.logs.f", Bytes::from_static(b"before"))
        .await?;
    within("flush", writer.flush()).await??;
    kept(&log, "app.logs.f", "before").await?;
    let mut follower = within("open", log.read("app.logs.f", true)).await??;
    for i in 0..3 {
        writer
            .publish("app.logs.f", Bytes::from(format!("after{i}")))
            .await?;
        writer
            .publish("app.logs.other", Bytes::from_static(b"not this"))
            .await?;
    }
    let mut seen = Vec::new();
    let mut last_seq = 0;
    while seen.len() < 4 {
        let entry = within("followed entry", follower.next())
            .await?
            .context("follower ended")??;
        ensure!(entry.seq > last_seq);
        last_seq = entry.seq;
        seen.push(String::from_utf8(entry.payload.to_vec())?);
    }
    ensure!(seen == ["before", "after0", "after1", "after2"], "{seen:?}");
    Ok(())
}

async fn log_refuses_bad_names(world: World) -> anyhow::Result<()> {
    let bad_name = world.first.log("no.dots", &log_config(1)).await;
    ensure!(
        matches!(bad_name, Err(BusError::Log { .. })),
        "{:?}",
        bad_name.err()
    );
    let mut config = log_config(1);
    config.subjects = "a..b".to_owned();
    let bad_subjects = world.first.log("plane_bad", &config).await;
    ensure!(
        matches!(bad_subjects, Err(BusError::InvalidSubject { .. })),
        "{:?}",
        bad_subjects.err()
    );
    let log = within("open", world.first.log("plane_ok", &log_config(1))).await??;
    let bad_read = log.read("a..b", false).await;
    ensure!(matches!(bad_read, Err(BusError::InvalidSubject { .. })));
    Ok(())
}

async fn log_drops_the_oldest_past_its_byte_limit(world: World) -> anyhow::Result<()> {
    let mut config = log_config(100);
    config.max_bytes = 2048;
    let log = within("open", world.first.log("plane_small_log", &config)).await??;
    let writer = world.bus().await?;
    for i in 0..10 {
        let payload = format!("{i}{}", "x".repeat(499));
        let subject = if i % 2 == 0 {
            "app.logs.even"
        } else {
            "app.logs.odd"
        };
        writer.publish(subject, Bytes::from(payload)).await?;
    }
    within("flush", writer.flush()).await??;
    kept(&log, "app.logs.odd", &format!("9{}", "x".repeat(499))).await?;
    let mut all = within("open", log.read("app.logs.*", false)).await??;
    let all = read_to_end(&mut all).await?;
    let firsts: Vec<char> = all.iter().filter_map(|(_, p)| p.chars().next()).collect();
    // The newest, in order, as many as fit (how a store counts overhead differs a little).
    ensure!(!firsts.is_empty() && firsts.len() < 5, "{firsts:?}");
    let expected: Vec<char> = ('0'..='9').skip(10 - firsts.len()).collect();
    ensure!(firsts == expected, "the newest kept: {firsts:?}");
    Ok(())
}
