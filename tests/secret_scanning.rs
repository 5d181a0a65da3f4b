//! The secret-scanning receiver (issue 24): signed leak reports, as GitHub's
//! secret scanning partner program sends them, revoke, quarantine or flag
//! the keys they name; unsigned, tampered or unknown-key reports are 401
//! and never reach the store.
//!
//! Reports are signed with a P-256 key made in the test, whose public key
//! the receiver gets through `StaticKeys` (the `ReporterKeys` trait). The
//! store is a memory store behind a hook that counts the receiver's calls.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::Router;
use base64::Engine as _;
use http::{Method, Request, StatusCode};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower_api_key::event::{CompromiseEvent, KeyEvent};
use tower_api_key::secret_scanning::{self, ReceiverConfig, ReporterKey, StaticKeys};
use tower_api_key::store::{Compromise, LeakAction, NewKey, StoreError};
use tower_api_key::{KeyFormat, KeyStore, MemoryStore, Reason};

use common::hooked::{Call, Hook, Hooked};
use common::http::{app, request_with_key, whoami_with_key, Fixture, NARROW};
use common::Reply;

const KEY_ID: &str = "test-reporter-key";
const URL: &str = "https://github.com/octo/repo/blob/abc/config.env";

/// A reporter: a P-256 key pair made here.
struct Reporter {
    key: SigningKey,
}

impl Reporter {
    fn new() -> Self {
        let mut bytes = [0u8; 32];
        loop {
            getrandom::fill(&mut bytes).unwrap();
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return Self { key };
            }
        }
    }

    fn public(&self) -> ReporterKey {
        use p256::pkcs8::EncodePublicKey;
        let pem = self
            .key
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        ReporterKey::from_pem(&pem).unwrap()
    }

    /// The low-S signature of `body`, DER.
    fn sign(&self, body: &[u8]) -> Vec<u8> {
        let signature: Signature = self.key.sign(body);
        let signature = signature.normalize_s().unwrap_or(signature);
        signature.to_der().as_bytes().to_vec()
    }

    /// The same signature in its high-S form, (r, n - s), DER.
    fn sign_high_s(&self, body: &[u8]) -> Vec<u8> {
        let signature: Signature = self.key.sign(body);
        let low = signature.normalize_s().unwrap_or(signature);
        let (r, s) = low.split_scalars();
        let high = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        assert!(high.normalize_s().is_some(), "the form made is high-S");
        high.to_der().as_bytes().to_vec()
    }
}

/// Counts the receiver's calls into the store; `gate` (when set) holds each
/// until that many have arrived.
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
    gate: Option<tokio::sync::Barrier>,
}

#[async_trait]
impl Hook for Counting {
    async fn before(&self, _store: &MemoryStore, call: Call<'_>) -> Result<(), StoreError> {
        if let Call::RecordCompromise { .. } = call {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.wait().await;
            }
        }
        Ok(())
    }
}

/// The fixture's app with the receiver merged in, the reporter, the store's
/// counter and the hook's events.
struct Setup {
    fx: Fixture,
    router: Router,
    reporter: Reporter,
    counting: Arc<Counting>,
    events: tokio::sync::mpsc::UnboundedReceiver<KeyEvent>,
}

fn setup(action: LeakAction) -> Setup {
    setup_with(action, Counting::default())
}

fn setup_with(action: LeakAction, counting: Counting) -> Setup {
    let fx = Fixture::new();
    let reporter = Reporter::new();
    let hooked = Hooked::new(fx.store.clone(), counting);
    let counting = hooked.hook.clone();
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let config = ReceiverConfig::github(StaticKeys::new().with_key(KEY_ID, reporter.public()))
        .action(action)
        .on_compromised(move |event| {
            let _ = tx.send(event);
        });
    let router = app(&fx.auth)
        .router
        .merge(secret_scanning::router(hooked, config));
    Setup {
        fx,
        router,
        reporter,
        counting,
        events,
    }
}

impl Setup {
    fn calls(&self) -> usize {
        self.counting.calls.load(Ordering::SeqCst)
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        common::http::send(&self.router, request).await
    }

    /// Posts `body` signed by the reporter.
    async fn report(&self, body: &[u8]) -> Reply {
        let signature = self.reporter.sign(body);
        self.send(signed(body, KEY_ID, &signature)).await
    }

    /// Every event the hook got, once nothing can send more: the router
    /// (which holds the hook) is dropped and every spawned notification
    /// has finished. Each is a `KeyEvent::Compromised`.
    async fn all_events(self) -> Vec<CompromiseEvent> {
        let Setup {
            router, mut events, ..
        } = self;
        drop(router);
        let mut all = Vec::new();
        while let Some(event) = events.recv().await {
            assert_eq!(event.kind(), "compromised");
            match event {
                KeyEvent::Compromised(leak) => all.push(leak),
                other => panic!("not a compromise: {other:?}"),
            }
        }
        all
    }
}

fn signed(body: &[u8], identifier: &str, signature: &[u8]) -> Request<Body> {
    Request::post(secret_scanning::GITHUB_PATH)
        .header("content-type", "application/json")
        .header("Github-Public-Key-Identifier", identifier)
        .header(
            "Github-Public-Key-Signature",
            base64::engine::general_purpose::STANDARD.encode(signature),
        )
        .body(Body::from(body.to_vec()))
        .unwrap()
}

fn report_of(tokens: &[&str]) -> Vec<u8> {
    let items: Vec<Value> = tokens
        .iter()
        .map(|t| json!({"token": t, "type": "tower_api_key", "url": URL, "source": "content"}))
        .collect();
    serde_json::to_vec(&items).unwrap()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The feedback array: (token_hash, label) per entry, and that no entry
/// carries the raw token.
fn feedback(reply: &Reply) -> Vec<(String, String)> {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let entries: Vec<Value> = serde_json::from_slice(&reply.body).unwrap();
    entries
        .iter()
        .map(|e| {
            assert!(e.get("token_raw").is_none());
            assert_eq!(e["token_type"], "tower_api_key");
            (
                e["token_hash"].as_str().unwrap().to_owned(),
                e["label"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn grpc_whoami(key: &str) -> Request<Body> {
    Request::get("/whoami")
        .header("content-type", "application/grpc")
        .header(http::header::AUTHORIZATION, format!("Api-Key {key}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_signed_report_of_a_live_key_revokes_it_at_once_even_when_cached() {
    let s = setup(LeakAction::Revoke);
    let created = s.fx.key("sa-a", &[]).await;
    let key = created.key.expose_secret();
    assert_eq!(s.send(whoami_with_key(key)).await.status, StatusCode::OK);

    let reply = s.report(&report_of(&[key])).await;
    assert_eq!(
        feedback(&reply),
        vec![(sha256_hex(key), "true_positive".to_owned())]
    );
    assert!(!reply.contains(key));

    let after = s.send(whoami_with_key(key)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{after:?}");
    assert_eq!(after.reason(), Some(Reason::Unknown));
    assert!(s
        .fx
        .store
        .get(created.record.key_id)
        .await
        .unwrap()
        .is_none());
    let events = s.all_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key.record.key_id, created.record.key_id);
    assert_eq!(events[0].compromise.url, URL);
    assert_eq!(events[0].compromise.action, LeakAction::Revoke);
}

#[tokio::test]
async fn quarantine_refuses_the_reported_secret_on_every_route_until_a_reissue() {
    let s = setup(LeakAction::Quarantine);
    let created = s.fx.key("sa-a", &[NARROW]).await;
    let id = created.record.key_id;
    let key = created.key.expose_secret();
    // Cached before the report: the cache must not keep admitting it.
    let translate = || request_with_key(Method::POST, "/v1/translate", key);
    assert_eq!(s.send(translate()).await.status, StatusCode::OK);

    let reply = s.report(&report_of(&[key])).await;
    assert_eq!(feedback(&reply)[0].1, "true_positive");

    for request in [translate(), whoami_with_key(key)] {
        let reply = s.send(request).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
        assert_eq!(reply.reason(), Some(Reason::KeyCompromised));
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"], "key_compromised");
        assert!(reply
            .header(http::header::WWW_AUTHENTICATE)
            .contains("error=\"key_compromised\""));
    }
    let grpc = s.send(grpc_whoami(key)).await;
    assert_eq!(grpc.header("grpc-status"), "7", "{grpc:?}");

    let info = s.fx.store.get(id).await.unwrap().unwrap();
    let compromise: &Compromise = info.record.compromise.as_ref().unwrap();
    assert_eq!(compromise.url, URL);
    assert_eq!(compromise.source, "content");
    assert!(info.record.quarantined);

    // A reissue gives a secret that is not quarantined; the history stays.
    let reissued =
        s.fx.store
            .reissue(id, std::time::Duration::ZERO, None)
            .await
            .unwrap()
            .unwrap();
    let fresh = reissued.key.expose_secret();
    let reply = s.send(whoami_with_key(fresh)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let info = s.fx.store.get(id).await.unwrap().unwrap();
    assert!(!info.record.quarantined);
    assert!(info.record.compromise.is_some());
    assert_eq!(s.calls(), 1);
}

#[tokio::test]
async fn a_quarantined_secret_in_its_grace_stays_refused_after_a_reissue() {
    let s = setup(LeakAction::Quarantine);
    let created = s.fx.key("sa-a", &[]).await;
    let key = created.key.expose_secret();
    s.report(&report_of(&[key])).await;
    s.fx.store
        .reissue(
            created.record.key_id,
            std::time::Duration::from_secs(3600),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let reply = s.send(whoami_with_key(key)).await;
    assert_eq!(reply.reason(), Some(Reason::KeyCompromised), "{reply:?}");
}

#[tokio::test]
async fn notify_keeps_the_key_working_and_shows_compromised_at() {
    let s = setup(LeakAction::Notify);
    let created = s.fx.key("sa-a", &[]).await;
    let key = created.key.expose_secret();
    let reply = s.report(&report_of(&[key])).await;
    assert_eq!(feedback(&reply)[0].1, "true_positive");

    let reply = s.send(whoami_with_key(key)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let info =
        s.fx.store
            .get(created.record.key_id)
            .await
            .unwrap()
            .unwrap();
    let compromise = *info.record.compromise.clone().unwrap();
    assert_eq!(compromise.action, LeakAction::Notify);
    assert!(!info.record.quarantined);
    // The Caller shows it too.
    let router = app(&s.fx.auth);
    router.send(whoami_with_key(key)).await;
    let caller = router.only_seen().caller.unwrap();
    assert_eq!(caller.compromise(), Some(&compromise));
}

#[tokio::test]
async fn unsigned_tampered_or_unknown_key_reports_are_401_and_never_reach_the_store() {
    let s = setup(LeakAction::Revoke);
    let created = s.fx.key("sa-a", &[]).await;
    let key = created.key.expose_secret();
    let body = report_of(&[key]);
    let good = s.reporter.sign(&body);
    let other = Reporter::new().sign(&body);
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    let no_signature = Request::post(secret_scanning::GITHUB_PATH)
        .header("Github-Public-Key-Identifier", KEY_ID)
        .body(Body::from(body.clone()))
        .unwrap();
    let no_identifier = Request::post(secret_scanning::GITHUB_PATH)
        .header(
            "Github-Public-Key-Signature",
            base64::engine::general_purpose::STANDARD.encode(&good),
        )
        .body(Body::from(body.clone()))
        .unwrap();
    let cases = [
        ("tampered body", signed(&tampered, KEY_ID, &good)),
        ("wrong identifier", signed(&body, "another-key", &good)),
        ("another key's signature", signed(&body, KEY_ID, &other)),
        ("not DER", signed(&body, KEY_ID, b"not a signature")),
        ("missing signature", no_signature),
        ("missing identifier", no_identifier),
    ];
    for (case, request) in cases {
        let reply = s.send(request).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{case}: {reply:?}");
    }
    assert_eq!(s.calls(), 0, "an unsigned report reached the store");
    assert_eq!(s.send(whoami_with_key(key)).await.status, StatusCode::OK);
    assert!(s.all_events().await.is_empty());
}

#[tokio::test]
async fn a_body_over_the_bound_is_refused_before_the_store() {
    let s = setup(LeakAction::Revoke);
    let body = vec![b' '; secret_scanning::DEFAULT_MAX_BODY + 1];
    let reply = s.report(&body).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    assert_eq!(s.calls(), 0);
}

#[tokio::test]
async fn low_s_and_high_s_signatures_are_both_accepted() {
    let s = setup(LeakAction::Notify);
    let body = report_of(&["not a key"]);
    for signature in [s.reporter.sign(&body), s.reporter.sign_high_s(&body)] {
        let reply = s.send(signed(&body, KEY_ID, &signature)).await;
        assert_eq!(
            feedback(&reply),
            vec![(sha256_hex("not a key"), "false_positive".to_owned())]
        );
    }
}

#[tokio::test]
async fn a_report_of_1000_tokens_answers_a_label_for_each() {
    let s = setup(LeakAction::Revoke);
    let format = KeyFormat::default();
    let mut tokens: Vec<(String, &str)> = Vec::new();
    for i in 0..250 {
        let live =
            s.fx.store
                .create(NewKey::new(format!("sa-{}", i % 5)))
                .await
                .unwrap();
        tokens.push((live.key.expose_secret().to_owned(), "true_positive"));
        let revoked = s.fx.store.create(NewKey::new("sa-r")).await.unwrap();
        assert!(s
            .fx
            .store
            .revoke(revoked.record.key_id, None)
            .await
            .unwrap());
        tokens.push((revoked.key.expose_secret().to_owned(), "true_positive"));
        let unknown = format.generate().unwrap();
        tokens.push((unknown.expose_secret().to_owned(), "false_positive"));
        let malformed = common::http::with_bad_checksum(live.key.expose_secret());
        tokens.push((malformed, "false_positive"));
    }
    let texts: Vec<&str> = tokens.iter().map(|(t, _)| t.as_str()).collect();
    let reply = s.report(&report_of(&texts)).await;
    let labels = feedback(&reply);
    assert_eq!(labels.len(), 1000);
    for ((token, expected), (hash, label)) in tokens.iter().zip(&labels) {
        assert_eq!(hash, &sha256_hex(token));
        assert_eq!(label, expected);
    }
    // Malformed tokens cost no lookup; every other one does.
    assert_eq!(s.calls(), 750);
    assert_eq!(s.all_events().await.len(), 250);
}

#[tokio::test]
async fn the_same_report_twice_acts_once_and_notifies_once() {
    let s = setup(LeakAction::Quarantine);
    let created = s.fx.key("sa-a", &[]).await;
    let body = report_of(&[created.key.expose_secret()]);
    let first = s.report(&body).await;
    let version =
        s.fx.store
            .get(created.record.key_id)
            .await
            .unwrap()
            .unwrap()
            .version;
    let second = s.report(&body).await;
    assert_eq!(feedback(&first), feedback(&second));
    let after =
        s.fx.store
            .get(created.record.key_id)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(after.version, version, "the replay wrote");
    assert_eq!(s.all_events().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_identical_reports_at_once_act_once() {
    // Both requests are inside the store call before either writes.
    let counting = Counting {
        gate: Some(tokio::sync::Barrier::new(2)),
        ..Counting::default()
    };
    let s = setup_with(LeakAction::Notify, counting);
    let created = s.fx.key("sa-a", &[]).await;
    let body = report_of(&[created.key.expose_secret()]);
    let signature = s.reporter.sign(&body);
    let (a, b) = tokio::join!(
        common::http::send(&s.router, signed(&body, KEY_ID, &signature)),
        common::http::send(&s.router, signed(&body, KEY_ID, &signature)),
    );
    assert_eq!(feedback(&a), feedback(&b));
    assert_eq!(s.calls(), 2);
    let info =
        s.fx.store
            .get(created.record.key_id)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(info.version.get(), 2, "one write");
    assert_eq!(s.all_events().await.len(), 1);
}

#[tokio::test]
async fn a_policy_per_key_picks_the_action_from_what_the_store_holds() {
    let fx = Fixture::new();
    let reporter = Reporter::new();
    let config = ReceiverConfig::github(StaticKeys::new().with_key(KEY_ID, reporter.public()))
        .action_for(|info| {
            if &*info.record.service_account_id == "sa-vip" {
                LeakAction::Quarantine
            } else {
                LeakAction::Revoke
            }
        });
    let router = app(&fx.auth)
        .router
        .merge(secret_scanning::router(fx.store.clone(), config));
    let vip = fx.key("sa-vip", &[]).await;
    let other = fx.key("sa-other", &[]).await;
    let body = report_of(&[vip.key.expose_secret(), other.key.expose_secret()]);
    let signature = reporter.sign(&body);
    let reply = common::http::send(&router, signed(&body, KEY_ID, &signature)).await;
    assert_eq!(feedback(&reply).len(), 2);
    let vip_reply = common::http::send(&router, whoami_with_key(vip.key.expose_secret())).await;
    assert_eq!(
        vip_reply.reason(),
        Some(Reason::KeyCompromised),
        "{vip_reply:?}"
    );
    let other_reply = common::http::send(&router, whoami_with_key(other.key.expose_secret())).await;
    assert_eq!(
        other_reply.reason(),
        Some(Reason::Unknown),
        "{other_reply:?}"
    );
}

/// The hook is the lifecycle's hook type, and a panic in it (on the first
/// key of a report) does not lose the events after it. Before the event
/// hook was shared, a panic ended the loop that called it: the second key's
/// event was never delivered.
#[tokio::test]
async fn a_panicking_hook_does_not_lose_the_other_keys_events() {
    let fx = Fixture::new();
    let reporter = Reporter::new();
    let first = fx.key("sa-a", &[]).await;
    let second = fx.key("sa-b", &[]).await;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = calls.clone();
    let hook = move |event: KeyEvent| {
        if hook_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the pager is down");
        }
        let _ = tx.send(event.key().record.key_id);
    };
    let config = ReceiverConfig::github(StaticKeys::new().with_key(KEY_ID, reporter.public()))
        .action(LeakAction::Notify)
        .on_compromised(hook);
    let router = secret_scanning::router(fx.store.clone(), config);
    let body = report_of(&[first.key.expose_secret(), second.key.expose_secret()]);
    let signature = reporter.sign(&body);
    let reply = common::http::send(&router, signed(&body, KEY_ID, &signature)).await;
    assert_eq!(reply.status, StatusCode::OK);
    drop(router);
    let mut delivered = Vec::new();
    while let Some(id) = events.recv().await {
        delivered.push(id);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(delivered, vec![second.record.key_id]);
}
