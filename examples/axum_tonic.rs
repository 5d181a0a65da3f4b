//! axum and tonic on one port, behind one `Authenticator` (one verifier, one
//! cache): HTTP routes with their scope policies, and the demo gRPC service
//! (proto/demo.proto) with a per-method table. gRPC clients get gRPC statuses,
//! HTTP clients HTTP responses.
//!
//! ```sh
//! cargo run --example axum_tonic      # BIND=127.0.0.1:0 for any free port
//! curl -i -H "Authorization: Api-Key $API_KEY_AI" $ADDR/whoami
//! python3 scripts/grpc_client.py WhoAmI --key "$API_KEY_AI"
//! ```
//!
//! Its stdout is `export ADDR=...` and `export API_KEY_<NAME>=...` lines
//! only; logs go to stderr. axum serves gRPC over HTTP/2 with its `http2`
//! feature.

mod support;

#[path = "support/assistant.rs"]
mod assistant;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tonic::service::Routes;
use tower_api_key::auth::{grpc::MethodPolicies, FailedAttemptLimit};
use tower_api_key::MemoryStore;
use tower_api_key::{Authenticator, Caller};

use assistant::{AssistantServer, DemoAssistant};
use support::{FOUNDATION_MODELS, TRANSLATE};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    support::init_logging();

    let store = MemoryStore::new();
    // Built once: the HTTP routes and the gRPC service share its cache and
    // its failed-attempt limiter.
    let auth = Authenticator::builder(store.clone())
        .positive_ttl(Duration::from_secs(60))
        .failed_attempt_limit(FailedAttemptLimit::new(30, Duration::from_secs(60)))
        .build();

    // gRPC: one policy per method, checked by one layer on the service's routes.
    let methods = MethodPolicies::builder()
        .require_any("/demo.Assistant/Translate", [TRANSLATE, FOUNDATION_MODELS])
        .require_any("/demo.Assistant/Generate", [FOUNDATION_MODELS])
        .any_valid_key("/demo.Assistant/WhoAmI")
        .build()?;
    let grpc = Routes::new(AssistantServer::new(DemoAssistant))
        .into_axum_router()
        .route_layer(auth.layer(methods));

    // HTTP: one layer per route, as in the quickstart.
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/whoami", get(whoami).route_layer(auth.any_valid_key()))
        .route(
            "/v1/legacy",
            get(|| async { "legacy" }).route_layer(auth.unscoped_keys_only()),
        )
        .merge(grpc);

    let listener = support::bind("127.0.0.1:3000").await?;
    support::mint(&store, "axum_tonic", support::demo_keys()?).await?;

    // ConnectInfo gives the failed-attempt limiter each client's address,
    // for HTTP and gRPC requests alike.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(support::shutdown_signal())
    .await?;
    Ok(())
}

async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({
        "service_account_id": caller.service_account_id(),
        "key_id": caller.key_id().to_string(),
        "scopes": caller.scopes().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    }))
}
