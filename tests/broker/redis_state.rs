//! The Redis state store against a real `redis-server` (started here on a free port): two
//! stores stand for two broker replicas.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ephemera::state::redis::RedisStore;
use ephemera::state::{Mark, StateError, StateStore};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Redis {
    port: u16,
    child: Option<Child>,
}

fn redis_available() -> bool {
    let found = Command::new("redis-server").arg("--version").output().is_ok();
    assert!(
        found
            || !std::env::var("CI")
                .is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false")),
        "redis-server missing (CI=true): scripts/test installs it"
    );
    if !found {
        eprintln!("redis-server not installed; skipped");
    }
    found
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis { port, child: None };
        r.spawn();
        r
    }
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--maxmemory-policy", "noeviction"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    fn store(&self) -> RedisStore {
        RedisStore::new(&self.url(), Duration::from_millis(300), "test", true).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn single_use_and_nonces_hold_across_replicas() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (redis.store(), redis.store());
    let t = now();
    assert_eq!(a.mark_used("tok-1", t + 300, t, t, None).await, Ok(Mark::Fresh));
    assert_eq!(b.mark_used("tok-1", t + 300, t, t, None).await, Ok(Mark::AlreadyUsed));
    assert_eq!(b.mark_used("tok-2", t + 300, t, t, None).await, Ok(Mark::Fresh), "another assertion is fresh");
    a.put_nonce("n-1", "role-a", t + 60, t).await.unwrap();
    assert_eq!(b.take_nonce("n-1", t).await, Ok(Some("role-a".into())));
    assert_eq!(a.take_nonce("n-1", t).await, Ok(None), "taken once, across replicas");
    assert_eq!(a.take_nonce("never-issued", t).await, Ok(None));
    assert!(a.ready().await.is_ok());
}

#[tokio::test]
async fn concurrent_marks_have_exactly_one_winner() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let stores: Vec<_> = (0..4).map(|_| std::sync::Arc::new(redis.store())).collect();
    let t = now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = stores[i % stores.len()].clone();
        tasks.push(tokio::spawn(async move { s.mark_used("contended", t + 300, t, t, None).await }));
    }
    let mut fresh = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Mark::Fresh) => fresh += 1,
            Ok(Mark::AlreadyUsed) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fresh, 1);
}

/// The marks of concurrent exchanges go to Redis in one script call, which reads the counter once
/// and writes it once: it still counts every mark, as one call per mark does (the twin, one at a
/// time), and a replay inside the same call is refused.
#[tokio::test]
async fn the_counter_counts_every_mark_of_a_batched_call() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let store = std::sync::Arc::new(redis.store());
    let t = now();
    let marks = (0..40).map(|i| {
        let s = store.clone();
        // ids 0..39 with every tenth twice: 36 fresh, 4 replays
        let id = format!("batched-{}", if i % 10 == 9 { i - 1 } else { i });
        tokio::spawn(async move { s.mark_used(&id, t + 300, t, t + 2, None).await })
    });
    let mut answers = std::collections::BTreeMap::new();
    for task in marks.collect::<Vec<_>>() {
        *answers.entry(format!("{:?}", task.await.unwrap())).or_insert(0) += 1;
    }
    assert_eq!(answers.get("Ok(Fresh)"), Some(&36), "{answers:?}");
    assert_eq!(answers.get("Ok(AlreadyUsed)"), Some(&4), "{answers:?}");
    assert_eq!(redis_get(&redis, "{test}:meta:seq").await.as_deref(), Some("40"));
    for i in 0..3 {
        assert_eq!(store.mark_used(&format!("one-{i}"), t + 300, t, t + 2, None).await, Ok(Mark::Fresh));
    }
    assert_eq!(redis_get(&redis, "{test}:meta:seq").await.as_deref(), Some("43"));
}

#[tokio::test]
async fn a_redis_that_lost_its_data_does_not_reopen_replays() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::start();
    let store = redis.store();
    let t = now();
    // at the first start against an empty Redis, assertions issued before it are refused too
    assert!(matches!(store.mark_used("older", t + 300, t, t - 5, None).await, Ok(Mark::EpochReset { .. })));
    assert_eq!(store.mark_used("tok", t + 300, t, t, None).await, Ok(Mark::Fresh));
    assert_eq!(store.mark_used("tok", t + 300, t, t, None).await, Ok(Mark::AlreadyUsed));
    // restart without persistence: every used id is gone, and so is the epoch marker
    redis.kill();
    redis.spawn();
    let later = t + 2;
    let mut result = store.mark_used("tok", t + 300, later, t, None).await;
    // the connection manager may need a few calls to reconnect (it backs off): retry, bounded
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(result, Err(StateError::Unavailable(_))) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        result = store.mark_used("tok", t + 300, later, t, None).await;
    }
    assert!(matches!(result, Ok(Mark::EpochReset { .. })), "{result:?}");
    // an assertion issued after the new epoch is fine
    let fresh_iat = now() + 2;
    assert_eq!(store.mark_used("tok-new", fresh_iat + 300, fresh_iat, fresh_iat, None).await, Ok(Mark::Fresh));
}

#[tokio::test]
async fn a_dead_redis_fails_closed_within_the_timeout_and_recovers() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::start();
    let store = redis.store();
    let t = now();
    assert!(store.ready().await.is_ok());
    redis.kill();
    // (bounded by the 300 ms command timeout: a hang would fail the test by never returning)
    assert!(matches!(store.mark_used("x", t + 300, t, t, None).await, Err(StateError::Unavailable(_))));
    assert!(store.ready().await.is_err());
    redis.spawn();
    // Redis is back, empty (no persistence): answering, but its revocations are gone, so the
    // store is not ready until an admin confirms they are re-asserted (review C5); no broker
    // restart is needed
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.ready().await {
            Err(StateError::RevocationsLost(_)) => break,
            other => assert!(Instant::now() < deadline, "no answer from the restarted Redis: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.confirm_reset(now()).await.unwrap().is_some());
    assert_eq!(store.ready().await, Ok(()));
}

#[tokio::test]
async fn a_fresh_mark_records_its_grant_in_the_same_step() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (redis.store(), redis.store());
    let t = now();
    let grant = ephemera::state::Grant {
        id: "jti-1".into(),
        subject: "repo:acme@1/app@2".into(),
        task: "2/7/1".into(),
        role: "deploy".into(),
        kind: "jwt".into(),
        issued_at: t,
        expires_at: t + 300,
        issuer: String::new(),
        provider: "ci".into(),
        audience: None,
        session: None,
    };
    assert_eq!(a.mark_used("tok-g", t + 300, t, t, Some(&grant)).await, Ok(Mark::Fresh));
    assert_eq!(b.grants(t).await.unwrap(), vec![grant.clone()]);
    // a refused mark records nothing
    let other = ephemera::state::Grant { id: "jti-2".into(), ..grant.clone() };
    assert_eq!(b.mark_used("tok-g", t + 300, t, t, Some(&other)).await, Ok(Mark::AlreadyUsed));
    assert_eq!(a.grants(t).await.unwrap(), vec![grant]);
    // expired grants leave the inventory
    assert!(a.grants(t + 301).await.unwrap().is_empty());
}

/// Every key the store writes expires exactly when it should: the used mark at the assertion's
/// `until`, the grant record and its inventory score at the credential's expiry, a revocation at
/// its end; an expiry already past is clamped to the next second (a key must never be written
/// without one, nor with one in the past, which Redis would drop at once).
#[tokio::test]
async fn every_key_expires_exactly_when_it_should() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let store = redis.store();
    let t = now();
    let grant = |id: &str, expires_at: i64| ephemera::state::Grant {
        id: id.into(),
        subject: "s".into(),
        task: "run-1".into(),
        role: "deploy".into(),
        kind: "jwt".into(),
        issued_at: t,
        expires_at,
        issuer: String::new(),
        provider: "ci".into(),
        audience: None,
        session: None,
    };
    assert_eq!(store.mark_used("tok", t + 300, t, t, Some(&grant("g1", t + 900))).await, Ok(Mark::Fresh));
    assert_eq!(store.mark_used("late", t - 10, t, t, Some(&grant("g2", t - 10))).await, Ok(Mark::Fresh));
    store.revoke("task:run-1", t + 43_200, t).await.unwrap();
    store.revoke("task:old", t - 5, t).await.unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut expiry = async |key: &str| -> i64 {
        redis::cmd("PEXPIRETIME").arg(format!("{{test}}:{key}")).query_async(&mut c).await.unwrap()
    };
    assert_eq!(expiry("used:tok").await, (t + 300) * 1000);
    assert_eq!(expiry("grant:g1").await, (t + 900) * 1000);
    assert_eq!(expiry("revoked:task:run-1").await, (t + 43_200) * 1000);
    // past expiries: the next second
    assert_eq!(expiry("used:late").await, (t + 1) * 1000);
    assert_eq!(expiry("grant:g2").await, (t + 1) * 1000);
    assert_eq!(expiry("revoked:task:old").await, (t + 1) * 1000);
    let scores: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg("{test}:meta:grants")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(scores, [("g2".to_owned(), t + 1), ("g1".to_owned(), t + 900)]);
    // the revocation is in force until its end, and keys name what they revoke
    assert_eq!(
        store.revoked(&["task:run-1".into(), "task:other".into()], t + 43_200).await,
        Ok(vec!["task:run-1".into()])
    );
}

/// Runs one command on the test Redis directly (what an operator or a fault does to it).
async fn redis_cmd(redis: &Redis, args: &[&str]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
}

/// One key's value on the test Redis, read directly.
async fn redis_get(redis: &Redis, key: &str) -> Option<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap()
}

/// Revocations vanish with a Redis that lost its data (FLUSHALL): the broker then answers
/// nothing about revocations (so no exchange passes) until an admin has re-asserted them and
/// confirmed, rather than allowing what was revoked (review C5). The twin: before the loss, and
/// after the confirmation, revocations are answered.
#[tokio::test]
async fn revocations_lost_with_the_data_fail_closed_until_confirmed() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let store = redis.store();
    let t = now();
    let keys = vec!["subject:ci:svc".to_owned(), "role:deploy".to_owned()];
    store.revoke("subject:ci:svc", t + 3600, t).await.unwrap();
    assert_eq!(store.revoked(&keys, t).await, Ok(vec!["subject:ci:svc".to_owned()]));
    redis_cmd(&redis, &["FLUSHALL"]).await;
    assert!(matches!(store.revoked(&keys, t).await, Err(StateError::RevocationsLost(_))));
    // a mark alone (which restarts the epoch marker) does not make revocations trustworthy
    assert!(matches!(store.mark_used("m", t + 300, t, t - 100, None).await, Ok(Mark::EpochReset { .. })));
    assert!(store.revoked(&keys, t).await.is_err());
    // the operator re-asserts what was revoked, then confirms; every broker answers again
    store.revoke("subject:ci:svc", t + 3600, t).await.unwrap();
    let epoch = store.confirm_reset(t).await.unwrap();
    assert!(epoch.is_some());
    assert_eq!(store.revoked(&keys, t).await, Ok(vec!["subject:ci:svc".to_owned()]));
    let other = redis.store();
    assert_eq!(other.revoked(&keys, t).await, Ok(vec!["subject:ci:svc".to_owned()]));
}

/// A broker with a past (`first_deployment = false`: its audit log has records) never takes an
/// empty store as new: its revocations are refused until confirmed. The twin: a first
/// deployment on an empty store answers at once.
#[tokio::test]
async fn a_broker_with_a_past_does_not_take_an_empty_store_as_new() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let t = now();
    let keys = vec!["role:deploy".to_owned()];
    let old = RedisStore::new(&redis.url(), Duration::from_millis(300), "test", false).unwrap();
    assert!(old.revoked(&keys, t).await.is_err());
    let first = redis.store();
    assert_eq!(first.revoked(&keys, t).await, Ok(vec![]));
    assert_eq!(old.revoked(&keys, t).await, Ok(vec![]), "confirmed by the first deployment's start");
}

/// A Redis rolled back to an older snapshot keeps its epoch marker but loses the marks made
/// since (review B4): the mark counter, lower than a broker has seen, gives it away; a new epoch
/// starts, so a replay of an assertion used after the snapshot is refused. The twin: without the
/// rollback the same id is `AlreadyUsed`, and an assertion issued after the new epoch is fresh.
#[tokio::test]
async fn a_rollback_to_an_older_snapshot_is_detected_by_the_mark_counter() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let store = redis.store();
    let t = now();
    // (issued after the epoch this first start sets, so they are not refused for it)
    let iat = t + 2;
    assert_eq!(store.mark_used("before", t + 300, t, iat, None).await, Ok(Mark::Fresh));
    assert_eq!(store.mark_used("after-snapshot", t + 300, t, iat, None).await, Ok(Mark::Fresh));
    assert_eq!(store.mark_used("after-snapshot", t + 300, t, iat, None).await, Ok(Mark::AlreadyUsed));
    // the restore: the counter and the later mark as they were at the snapshot, the marker kept
    redis_cmd(&redis, &["SET", "{test}:meta:seq", "1"]).await;
    redis_cmd(&redis, &["DEL", "{test}:used:after-snapshot"]).await;
    let later = t + 5;
    let reset = store.mark_used("after-snapshot", t + 300, later, iat, None).await;
    assert_eq!(reset, Ok(Mark::EpochReset { since: later }));
    let next = store.mark_used("new", later + 300, later, later, None).await;
    assert_eq!(next, Ok(Mark::Fresh));
    assert_eq!(store.mark_used("new", later + 300, later, later, None).await, Ok(Mark::AlreadyUsed));
}

/// Uses of a use-limited grant are taken exactly `max` times across two brokers on one Redis;
/// a grant issued before the store's epoch answers `Lost`.
#[tokio::test]
async fn uses_are_taken_exactly_max_times_across_brokers() {
    use ephemera::state::Uses;
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (redis.store(), redis.store());
    let t = now();
    let mut won = 0;
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        if matches!(s.consume("jti-u", 4, true, t + 300, t, t).await.unwrap(), Uses::Left(_)) {
            won += 1;
        }
    }
    assert_eq!(won, 4);
    assert_eq!(a.consume("jti-u", 4, false, t + 300, t, t).await, Ok(Uses::Left(0)));
    assert_eq!(b.consume("jti-v", 4, false, t + 300, t, t).await, Ok(Uses::Left(4)), "counted per grant");
    assert_eq!(a.consume("jti-w", 4, true, t + 300, t, t - 3600).await, Ok(Uses::Lost), "issued before the epoch");
}

/// The outbox is shared: an item put by one broker is leased by one broker at a time, comes back
/// once its lease ends, and is gone once done.
#[tokio::test]
async fn outbox_items_are_leased_once_until_done() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (redis.store(), redis.store());
    let t = now();
    let item = ephemera::state::Outgoing {
        id: "o1".into(),
        due: t,
        until: t + 300,
        attempts: 0,
        body: serde_json::json!({"kind": "x"}),
    };
    a.outbox_put(&item, t).await.unwrap();
    assert_eq!(b.outbox_lease(t, 30, 10).await.unwrap(), vec![item.clone()]);
    assert!(a.outbox_lease(t, 30, 10).await.unwrap().is_empty(), "leased by b");
    assert_eq!(a.outbox_lease(t + 31, 30, 10).await.unwrap().len(), 1, "the lease ended");
    b.outbox_done("o1", t).await.unwrap();
    assert!(a.outbox_lease(t + 100, 30, 10).await.unwrap().is_empty(), "done");
}

/// The calls each command of the test Redis has answered (`INFO commandstats`).
async fn command_calls(redis: &Redis) -> std::collections::BTreeMap<String, u64> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// The exchange's one round trip: the revocation check, the replay mark and the grant record in
/// one script call. A revoked workload's assertion is not spent and no grant is recorded; the
/// twin: the same call with no revocation in force spends it and records the grant, and a second
/// spend is a replay.
#[tokio::test]
async fn a_spend_checks_revocations_marks_and_records_in_one_round_trip() {
    use ephemera::state::Spend;
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (redis.store(), redis.store());
    let t = now();
    let iat = t + 2;
    let grant = ephemera::state::Grant {
        id: "jti-s".into(),
        subject: "svc".into(),
        task: "run-1".into(),
        role: "deploy".into(),
        kind: "jwt".into(),
        issued_at: t,
        expires_at: t + 300,
        issuer: String::new(),
        provider: "ci".into(),
        audience: None,
        session: None,
    };
    let keys = vec!["task:ci:run-1".to_owned(), "subject:ci:svc".to_owned(), "role:deploy".to_owned()];
    b.revoke("subject:ci:svc", t + 3600, t).await.unwrap();
    b.revoke("role:deploy", t + 3600, t).await.unwrap();
    // (connected, and the script loaded: neither is the exchange's own)
    assert_eq!(a.spend(&[], "warm-up", t + 300, t, iat, None).await, Ok(Spend::Marked(Mark::Fresh)));
    let before = command_calls(&redis).await;
    let spent = a.spend(&keys, "tok-s", t + 300, t, iat, Some(&grant)).await;
    let after = command_calls(&redis).await;
    assert_eq!(spent, Ok(Spend::Revoked(vec!["subject:ci:svc".to_owned(), "role:deploy".to_owned()])));
    assert!(b.grants(t).await.unwrap().is_empty(), "no grant recorded for a revoked workload");
    // One call from the client: the script. (Commandstats also counts what a script calls; the
    // INFO between is the test's own.) Before, the lookup was an MGET of its own.
    let delta = |cmd: &str| after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0);
    assert_eq!(delta("evalsha"), 1, "{before:?} -> {after:?}");
    let by_script = ["get", "exists", "set", "incr", "zadd", "zremrangebyscore", "info"];
    let others: u64 =
        after.keys().filter(|k| !by_script.contains(&k.as_str()) && *k != "evalsha").map(|k| delta(k)).sum();
    assert_eq!(others, 0, "{before:?} -> {after:?}");
    // the twin: nothing revoked for these keys; the assertion was not spent by the refusal
    let other = vec!["task:ci:run-2".to_owned()];
    assert_eq!(a.spend(&other, "tok-s", t + 300, t, iat, Some(&grant)).await, Ok(Spend::Marked(Mark::Fresh)));
    assert_eq!(b.grants(t).await.unwrap(), vec![grant.clone()]);
    assert_eq!(b.spend(&other, "tok-s", t + 300, t, iat, None).await, Ok(Spend::Marked(Mark::AlreadyUsed)));
    // revocations that cannot be trusted (the data was lost) refuse, and spend nothing
    redis_cmd(&redis, &["FLUSHALL"]).await;
    let flushed = command_calls(&redis).await;
    assert!(matches!(a.spend(&other, "tok-l", t + 300, t, iat, None).await, Err(StateError::RevocationsLost(_))));
    assert_eq!(command_calls(&redis).await.get("incr"), flushed.get("incr"), "nothing marked");
    let late = t + 10;
    a.confirm_reset(late).await.unwrap();
    assert_eq!(a.spend(&other, "tok-l", late + 300, late, late, None).await, Ok(Spend::Marked(Mark::Fresh)));
}

/// A spend under an epoch this broker saw, with the counter rolled back below what it saw, is
/// a loss of revocations too: refused, nothing spent (the verdict a lookup gives).
#[tokio::test]
async fn a_spend_after_a_rollback_refuses_and_spends_nothing() {
    use ephemera::state::Spend;
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let store = redis.store();
    let t = now();
    let iat = t + 2;
    let keys = vec!["role:deploy".to_owned()];
    assert_eq!(store.spend(&keys, "one", t + 300, t, iat, None).await, Ok(Spend::Marked(Mark::Fresh)));
    assert_eq!(store.spend(&keys, "two", t + 300, t, iat, None).await, Ok(Spend::Marked(Mark::Fresh)));
    redis_cmd(&redis, &["SET", "{test}:meta:seq", "1"]).await;
    assert!(matches!(store.spend(&keys, "three", t + 300, t, iat, None).await, Err(StateError::RevocationsLost(_))));
    assert!(matches!(store.revoked(&keys, t).await, Err(StateError::RevocationsLost(_))), "as a lookup says");
    // (the twin, a spend before the rollback, is the first two above)
}
