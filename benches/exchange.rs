//! `cargo bench --bench exchange`: the cost of one exchange against the crypto floor, measured in
//! the same run.
//!
//! - `rs256_verify`: full verification of an RS256 ID token (structure, header, key, signature,
//!   claims) with pinned keys;
//! - `es256_sign`: one broker JWT signature;
//! - `exchange/*`: the whole in-process exchange (verify + decide + replay mark + durable audit +
//!   mint + response) with the audit log on disk (`fdatasync` per allow) and on tmpfs.
//!
//! - `floor/*`: the crypto floor, the two primitives alone (aws-lc-rs, keys parsed once).
//!
//! After the runs it prints each exchange's ratio to `floor/rs256_verify + floor/es256_sign`, and
//! writes them to `$CARGO_TARGET_DIR/criterion/ephemera-floor.json` for `scripts/bench-peers`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The broker binary's allocator (src/main.rs): the figures here are those of the served broker.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64STD;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{BatchSize, Criterion};
use ephemera::clock::{Clock, SystemClock};
use ephemera::config::Config;
use ephemera::exchange::{ExchangeRequest, TOKEN_TYPE_ID_TOKEN};
use ephemera::secret::SubjectToken;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const ISSUER: &str = "https://token.actions.githubusercontent.com";

struct Issuer {
    key: RsaKeyPair,
    counter: AtomicU64,
}

impl Issuer {
    fn new() -> Self {
        Issuer { key: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(), counter: AtomicU64::new(0) }
    }
    fn jwks(&self) -> String {
        let pk = self.key.public_key();
        let n = B64.encode(pk.modulus().big_endian_without_leading_zero());
        let e = B64.encode(pk.exponent().big_endian_without_leading_zero());
        json!({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig", "n": n, "e": e}]}).to_string()
    }
    /// A realistic GitHub Actions token with a unique jti.
    fn token(&self, now: i64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let header = B64.encode(r#"{"alg":"RS256","kid":"bench","typ":"JWT"}"#);
        let claims = json!({
            "iss": ISSUER, "aud": "https://broker.example.com", "sub": "repo:acme/app:environment:prod",
            "repository": "acme/app", "repository_id": "123456789", "repository_owner": "acme",
            "repository_owner_id": "987654", "ref": "refs/heads/main", "ref_type": "branch",
            "environment": "prod", "event_name": "push", "workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
            "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main", "runner_environment": "github-hosted",
            "run_id": "9876543210", "run_attempt": "1", "sha": "d6f1c1ab3b5e1c6c3ee2f9c0d7a1b2c3d4e5f607",
            "jti": format!("bench-{n}"), "iat": now, "nbf": now, "exp": now + 300,
        });
        let payload = B64.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
        format!("{input}.{}", B64.encode(sig))
    }
}

/// The transaction bench's role: one record, one use (beside `deploy`).
const TRANSACTION_ROLE: &str = r#"
[[roles]]
name = "incident-reader"
provider = "github"
max_ttl = "15m"
max_uses = 1
conditions = { repository_id = "123456789" }
[[roles.authorization_details]]
type = "incident_record"
fields = ["record_id", "project"]
required = ["record_id"]
[roles.credential]
kind = "jwt"
audience = "incident-api"
"#;

fn roles_toml(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        // role `deploy` is the one the bench exchanges for; the rest are other repositories' roles
        let (name, repo_id) = if i == 0 {
            ("deploy".to_owned(), "123456789".to_owned())
        } else {
            (format!("deploy-{i}"), format!("{}", 100_000 + i))
        };
        out.push_str(&format!(
            r#"
[[roles]]
name = "{name}"
provider = "github"
max_ttl = "15m"
conditions = {{ repository_id = "{repo_id}", repository = "acme/*", ref = "refs/heads/main", environment = ["prod", "staging"] }}
credential = {{ kind = "jwt", audience = "https://partner.example" }}
"#
        ));
    }
    out
}

fn broker(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    jwks: &str,
    audit_dir: &Path,
    roles: usize,
) -> ephemera::exchange::Broker {
    broker_with_state(rt, dir, jwks, audit_dir, roles, "")
}

/// A redis-server on a free port for the replica benches, if the machine has one.
fn redis_server() -> Option<(std::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn broker_with_state(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    jwks: &str,
    audit_dir: &Path,
    roles: usize,
    state: &str,
) -> ephemera::exchange::Broker {
    std::fs::write(dir.join("jwks.json"), jwks).unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
issuer = "https://broker.example.com"
{state}
[audit]
path = "{audit}"
[[providers]]
name = "github"
profile = "github-actions"
issuer = "{ISSUER}"
audiences = ["https://broker.example.com"]
jwks_file = "jwks.json"
{roles}"#,
        audit = audit_dir.join("audit.jsonl").display(),
        roles = roles_toml(roles),
    );
    let key = dir.join("bench-key.pem");
    if !key.exists() {
        let pkcs8 =
            aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .unwrap()
                .to_pkcs8v1()
                .unwrap();
        let b64 = B64STD.encode(pkcs8.as_ref());
        std::fs::write(&key, format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")).unwrap();
    }
    let text = text.replace("[server]\n", &format!("[server]\nsigning_key_file = \"{}\"\n", key.display()));
    let config = Config::from_raw(toml::from_str(&text).unwrap(), dir).unwrap();
    let audit = ephemera::audit::AuditLog::open(&config.audit_path).unwrap();
    rt.block_on(ephemera::exchange::Broker::build(config, Arc::new(SystemClock), audit, None)).unwrap()
}

fn mean_ns(id: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = Path::new(&target).join("criterion").join(id).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    // First, while the heap is fresh: RSS growth is then the store's own.
    let store_bytes = store_bytes_per_exchange();
    let mut c = Criterion::default().configure_from_args();
    let issuer = Issuer::new();
    let now = SystemClock.now();
    let keys = ephemera_providers::KeySet::from_json(issuer.jwks().as_bytes()).unwrap();
    let rules = ephemera_providers::TokenRules::new(ISSUER, vec!["https://broker.example.com".into()]);
    let token = issuer.token(now);
    c.bench_function("rs256_verify", |b| {
        b.iter(|| ephemera_providers::verify_token(std::hint::black_box(&token), &rules, &keys, now).unwrap())
    });
    let signer = ephemera::minting::jwt::BrokerSigner::generate().unwrap();
    let claims = json!({"iss": "https://broker.example.com", "sub": "repo:acme/app:environment:prod", "aud": "https://partner.example",
        "iat": now, "nbf": now, "exp": now + 300, "jti": "abcdefghijklmnopqrstuv", "role": "deploy", "provider": "github",
        "src_iss": ISSUER, "task": "123456789/9876543210/1"});
    c.bench_function("es256_sign", |b| b.iter(|| signer.sign(std::hint::black_box(&claims)).unwrap()));

    // The crypto floor itself: the two primitives alone, with keys parsed once, no JOSE, no JSON.
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = B64.decode(sig).unwrap();
    let parsed = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        issuer.key.public_key().as_ref(),
    )
    .unwrap();
    let mut floor = c.benchmark_group("floor");
    floor.bench_function("rs256_verify", |b| {
        b.iter(|| parsed.verify_sig(std::hint::black_box(input.as_bytes()), &sig).unwrap())
    });
    let pair =
        aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let rng = SystemRandom::new();
    let message = signer.sign(&claims).unwrap();
    let message = message.expose().rsplit_once('.').unwrap().0.to_owned();
    floor.bench_function("es256_sign", |b| {
        b.iter(|| pair.sign(&rng, std::hint::black_box(message.as_bytes())).unwrap())
    });
    floor.finish();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shm = Path::new("/dev/shm");
    let mut variants: Vec<(&str, tempfile::TempDir)> =
        [("exchange/audit_on_disk", Some(dir.path())), ("exchange/audit_on_tmpfs", shm.is_dir().then_some(shm))]
            .into_iter()
            .filter_map(|(name, base)| Some((name, tempfile::tempdir_in(base?).unwrap())))
            .collect();
    let mut group = c.benchmark_group("exchange");
    for (name, audit_dir) in &variants {
        let b = broker(&rt, dir.path(), &issuer.jwks(), audit_dir.path(), 1);
        let short = name.trim_start_matches("exchange/");
        group.bench_function(short, |bench| {
            bench.iter_batched(
                || ExchangeRequest {
                    subject_token: SubjectToken::new(issuer.token(now)),
                    subject_token_type: TOKEN_TYPE_ID_TOKEN.into(),
                    role: "deploy".into(),
                    requested_token_type: None,
                    authorization_details: None,
                },
                |req| {
                    let r = rt.block_on(b.exchange_request(req, "bench"));
                    assert!(r.is_ok(), "{:?}", r.err());
                },
                BatchSize::SmallInput,
            )
        });
    }
    // 32 exchanges at once, reported per exchange in the ratios below:
    // - on a two-thread runtime, audit on disk: group commit lets them share fdatasyncs;
    // - on one thread, audit on tmpfs: the time per exchange is then what one core spends on it
    //   (the exchange's CPU cost, without the idle-wake latency of one exchange at a time).
    let concurrent = [
        ("audit_on_disk_32_concurrent", 2, Some(dir.path())),
        ("audit_on_tmpfs_32_concurrent_1_thread", 1, shm.is_dir().then_some(shm)),
    ];
    for (name, threads, base) in concurrent {
        let Some(base) = base else { continue };
        let mt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
        let audit_dir = tempfile::tempdir_in(base).unwrap();
        let b = std::sync::Arc::new(broker(&rt, dir.path(), &issuer.jwks(), audit_dir.path(), 1));
        group.bench_function(name, |bench| {
            bench.iter_batched(
                || {
                    (0..32)
                        .map(|_| ExchangeRequest {
                            subject_token: SubjectToken::new(issuer.token(now)),
                            subject_token_type: TOKEN_TYPE_ID_TOKEN.into(),
                            role: "deploy".into(),
                            requested_token_type: None,
                            authorization_details: None,
                        })
                        .collect::<Vec<_>>()
                },
                |reqs| {
                    mt.block_on(async {
                        let tasks: Vec<_> = reqs
                            .into_iter()
                            .map(|req| {
                                let b = b.clone();
                                tokio::spawn(async move { b.exchange_request(req, "bench").await.is_ok() })
                            })
                            .collect();
                        for t in tasks {
                            assert!(t.await.unwrap());
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }

    // Transaction-scoped grants (issue 15): an exchange carrying RFC 9396 authorization_details
    // (checked, in Cedar's context, in the JWT and the audit record), and one partner consume of
    // a use-limited JWT (signature, revocations, one atomic use), beside the plain exchange above.
    {
        let audit_dir = tempfile::tempdir_in(if shm.is_dir() { shm } else { dir.path() }).unwrap();
        let b = broker_with_state(&rt, dir.path(), &issuer.jwks(), audit_dir.path(), 1, TRANSACTION_ROLE);
        let details = r#"[{"type":"incident_record","record_id":"INC-1042","project":"alpha"}]"#;
        let request = |details: Option<&str>| ExchangeRequest {
            subject_token: SubjectToken::new(issuer.token(now)),
            subject_token_type: TOKEN_TYPE_ID_TOKEN.into(),
            role: "incident-reader".into(),
            requested_token_type: None,
            authorization_details: details.map(str::to_owned),
        };
        group.bench_function("plain_same_broker", |bench| {
            bench.iter_batched(
                || ExchangeRequest { role: "deploy".into(), ..request(None) },
                |req| assert!(rt.block_on(b.exchange_request(req, "bench")).is_ok()),
                BatchSize::SmallInput,
            )
        });
        group.bench_function("with_authorization_details", |bench| {
            bench.iter_batched(
                || request(Some(details)),
                |req| {
                    let r = rt.block_on(b.exchange_request(req, "bench"));
                    assert!(r.is_ok(), "{:?}", r.err());
                },
                BatchSize::SmallInput,
            )
        });
        let form = |token: &str, consume: bool| {
            let mut f = std::collections::HashMap::from([("token".to_owned(), token.to_owned())]);
            if consume {
                f.insert("consume".into(), "true".into());
            }
            f
        };
        let fresh = || {
            let t = rt.block_on(b.exchange_request(request(Some(details)), "bench")).unwrap();
            t.access_token.expose().to_owned()
        };
        group.bench_function("introspect", |bench| {
            let token = fresh();
            bench.iter(|| {
                let r = rt.block_on(b.introspect(&form(&token, false), None));
                assert!(matches!(r, Ok(ephemera::exchange::Introspection::Active(_))));
            })
        });
        group.bench_function("consume_one_use", |bench| {
            bench.iter_batched(
                fresh,
                |token| {
                    let r = rt.block_on(b.introspect(&form(&token, true), None));
                    assert!(matches!(r, Ok(ephemera::exchange::Introspection::Active(_))));
                },
                BatchSize::SmallInput,
            )
        });
    }

    // Shared state on a real Redis: one replica, and two replicas (two brokers, one Redis) taking
    // turns; audit on tmpfs so the Redis round trips stand out against the in-memory backend.
    // Tokens are minted at the current time: the store's epoch began when the brokers connected.
    if let (Some((mut redis, port)), true) = (redis_server(), shm.is_dir()) {
        let state =
            format!("[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\ncommand_timeout = \"2s\"");
        let a_dir = tempfile::tempdir_in(shm).unwrap();
        let b_dir = tempfile::tempdir_in(shm).unwrap();
        let a = broker_with_state(&rt, dir.path(), &issuer.jwks(), a_dir.path(), 1, &state);
        let b = broker_with_state(&rt, dir.path(), &issuer.jwks(), b_dir.path(), 1, &state);
        // The store's epoch begins when the brokers connect; an assertion is accepted only if it
        // was issued after it by more than the leeway (60 s), so tokens are dated 58 s ahead
        // (within the leeway for `iat` and `nbf`) and the epoch is 3 s old.
        rt.block_on(a.evaluator().state_ready()).unwrap();
        rt.block_on(b.evaluator().state_ready()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
        for (name, replicas) in [("redis_1_replica", vec![&a]), ("redis_2_replicas", vec![&a, &b])] {
            let turn = std::cell::Cell::new(0usize);
            group.bench_function(name, |bench| {
                bench.iter_batched(
                    || ExchangeRequest {
                        subject_token: SubjectToken::new(issuer.token(SystemClock.now() + 58)),
                        subject_token_type: TOKEN_TYPE_ID_TOKEN.into(),
                        role: "deploy".into(),
                        requested_token_type: None,
                        authorization_details: None,
                    },
                    |req| {
                        let i = turn.get();
                        turn.set(i + 1);
                        let r = rt.block_on(replicas[i % replicas.len()].exchange_request(req, "bench"));
                        assert!(r.is_ok(), "{:?}", r.err());
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        let _ = redis.kill();
    } else {
        println!("redis-server not found: the Redis benches are skipped");
    }
    group.finish();

    // The policy decision alone (the native evaluator, and Cedar beside it on the same role) for a
    // realistic GitHub claim set, with 1, 100 and 10,000 roles loaded: roles are found by name,
    // and each has its own slice, so the cost should not grow with the number of roles.
    let verified = ephemera_providers::verify_token(&issuer.token(now), &rules, &keys, now).unwrap();
    let mut group = c.benchmark_group("decide");
    for n in [1usize, 100, 10_000] {
        let audit_dir = tempfile::tempdir().unwrap();
        let b = broker(&rt, dir.path(), &issuer.jwks(), audit_dir.path(), n);
        let config = b.config();
        let role = config.roles["deploy"].clone();
        let workload = role.provider.profile.workload(&verified).unwrap();
        group.bench_function(format!("roles_{n}"), |bench| {
            bench.iter(|| {
                let d = config.engine.decide(
                    &role.policy,
                    &workload,
                    verified.claims(),
                    ISSUER,
                    &ephemera::policy::At { times: (now, now, now + 300), revoked: &[], details: None },
                );
                assert!(d.allows(), "{:?}", d.reasons());
            })
        });
        // the reference engine on the same role (the native evaluator is held to it)
        group.bench_function(format!("cedar_roles_{n}"), |bench| {
            bench.iter(|| {
                let d = config.engine.decide_cedar(
                    &role.policy,
                    &workload,
                    verified.claims(),
                    ISSUER,
                    &ephemera::policy::At { times: (now, now, now + 300), revoked: &[], details: None },
                );
                assert!(d.allows(), "{:?}", d.reasons());
            })
        });
    }
    group.finish();
    c.final_summary();

    if let Some(line) = store_bytes {
        println!("{line}");
    }
    let (Some(v), Some(s)) = (mean_ns("floor/rs256_verify"), mean_ns("floor/es256_sign")) else {
        println!("ratios: estimates not found (run without --test)");
        return;
    };
    println!("\n== ratios (mean times, same run) ==");
    println!("crypto floor: rs256_verify {:.1} us + es256_sign {:.1} us = {:.1} us", v / 1e3, s / 1e3, (v + s) / 1e3);
    if let (Some(tv), Some(ts)) = (mean_ns("rs256_verify"), mean_ns("es256_sign")) {
        println!(
            "with JOSE and claims: token verify {:.1} us ({:.2} x), broker JWT sign {:.1} us ({:.2} x)",
            tv / 1e3,
            tv / v,
            ts / 1e3,
            ts / s
        );
    }
    variants.push(("exchange/redis_1_replica", tempfile::tempdir().unwrap()));
    variants.push(("exchange/redis_2_replicas", tempfile::tempdir().unwrap()));
    for (name, _) in &variants {
        if let Some(e) = mean_ns(name) {
            println!("{name}: {:.1} us = {:.2} x crypto floor", e / 1e3, e / (v + s));
        }
    }
    for name in ["exchange/audit_on_disk_32_concurrent", "exchange/audit_on_tmpfs_32_concurrent_1_thread"] {
        if let Some(e) = mean_ns(name) {
            println!("{name}: {:.1} us per exchange = {:.2} x crypto floor", e / 32e3, e / 32.0 / (v + s));
        }
    }
    // For scripts/bench-peers: the floor and the in-process exchange, in nanoseconds.
    if let Some(e) = mean_ns("exchange/audit_on_disk") {
        let floor = json!({"rs256_verify_ns": v, "es256_sign_ns": s, "exchange_ns": e,
            "exchange_tmpfs_ns": mean_ns("exchange/audit_on_tmpfs"),
            "exchange_32_concurrent_ns": mean_ns("exchange/audit_on_disk_32_concurrent").map(|x| x / 32.0),
            "exchange_cpu_ns": mean_ns("exchange/audit_on_tmpfs_32_concurrent_1_thread").map(|x| x / 32.0)});
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        let path = Path::new(&target).join("criterion").join("ephemera-floor.json");
        if std::fs::write(&path, floor.to_string()).is_ok() {
            println!("wrote {}", path.display());
        }
    }
    if let Some(plain) = mean_ns("exchange/plain_same_broker") {
        for (name, what) in [
            ("exchange/with_authorization_details", "exchange with authorization_details"),
            ("exchange/introspect", "introspection of a use-limited JWT"),
            ("exchange/consume_one_use", "one consume (introspect, consume=true)"),
        ] {
            if let Some(e) = mean_ns(name) {
                println!(
                    "{what}: {:.1} us = {:.2} x the plain exchange ({:.1} us, same broker)",
                    e / 1e3,
                    e / plain,
                    plain / 1e3
                );
            }
        }
    }
    for n in [1, 100, 10_000] {
        if let Some(d) = mean_ns(&format!("decide/roles_{n}")) {
            println!("decide with {n} roles: {:.2} us ({:.3} x crypto floor)", d / 1e3, d / (v + s));
        }
        if let (Some(d), Some(cedar)) =
            (mean_ns(&format!("decide/roles_{n}")), mean_ns(&format!("decide/cedar_roles_{n}")))
        {
            println!("  Cedar on the same role: {:.1} us ({:.0} x the native evaluator)", cedar / 1e3, cedar / d);
        }
    }
}

/// Resident memory the in-memory store holds per exchange (one replay entry and one grant of a
/// GitHub-sized workload), from the process's RSS before and after 200,000 fresh marks.
fn store_bytes_per_exchange() -> Option<String> {
    use ephemera::state::StateStore;
    fn rss_kib() -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
    const N: usize = 200_000;
    let store = ephemera::state::memory::MemoryStore::new(N + 1);
    let ids: Vec<String> = (0..N)
        .map(|i| {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("token-{i}").as_bytes());
            d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().build().ok()?;
    let before = rss_kib()?;
    for (i, id) in ids.iter().enumerate() {
        let grant = ephemera::state::Grant {
            id: format!("{:022}", i),
            subject: format!("repo:acme/app-{i}:ref:refs/heads/main"),
            task: format!("123456789/{}/1", 9_000_000_000u64 + i as u64),
            role: "deploy".into(),
            kind: "jwt".into(),
            issued_at: 0,
            expires_at: 900,
            issuer: String::new(),
            provider: "gh".into(),
            audience: None,
            session: None,
        };
        rt.block_on(store.mark_used(id, 3600, 0, 0, Some(&grant))).unwrap();
    }
    let per = (rss_kib()? - before) * 1024.0 / N as f64;
    Some(format!("memory store: {per:.0} bytes per exchange (replay entry + grant), from RSS over {N} exchanges"))
}
