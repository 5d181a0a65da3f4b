//! A tonic gRPC server behind one `ApiKeyLayer` with a per-method scope table:
//! an in-memory key store, demo keys printed at start, and a service
//! (proto/demo.proto) whose methods need different scopes.
//!
//! ```sh
//! cargo run --example grpc --features tonic   # BIND=127.0.0.1:0 for any free port
//! python3 scripts/grpc_client.py WhoAmI --key "$API_KEY_AI"
//! ```
//!
//! Its stdout is `export ADDR=...` and `export API_KEY_<NAME>=...` lines
//! only (the Python client reads `ADDR`); logs go to stderr.
//!
//! | method | policy |
//! |---|---|
//! | `/demo.Assistant/Translate` | any of `yc.ai.translate.execute`, `yc.ai.foundationModels.execute` |
//! | `/demo.Assistant/Generate` | `yc.ai.foundationModels.execute` |
//! | `/demo.Assistant/WhoAmI` | any valid key |
//!
//! The service itself, and how its handlers read the `Caller`, is in
//! `examples/support/assistant.rs` (shared with `examples/axum_tonic.rs`).

mod support;

use std::time::Duration;

use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tower_api_key::auth::grpc::MethodPolicies;
use tower_api_key::Authenticator;
use tower_api_key::MemoryStore;

use support::{FOUNDATION_MODELS, TRANSLATE};

#[path = "support/assistant.rs"]
mod assistant;

use assistant::{AssistantServer, DemoAssistant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    support::init_logging();

    let store = MemoryStore::new();
    let auth = Authenticator::builder(store.clone())
        .positive_ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        .build();

    // One policy per method; a malformed path fails here, at start-up.
    // Unlisted methods default to unscoped keys only.
    let methods = MethodPolicies::builder()
        .require_any("/demo.Assistant/Translate", [TRANSLATE, FOUNDATION_MODELS])
        .require_any("/demo.Assistant/Generate", [FOUNDATION_MODELS])
        .any_valid_key("/demo.Assistant/WhoAmI")
        .build()?;

    let listener = support::bind("127.0.0.1:50051").await?;
    support::mint(&store, "grpc example", support::demo_keys()?).await?;

    Server::builder()
        .layer(auth.layer(methods))
        .add_service(AssistantServer::new(DemoAssistant))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), support::shutdown_signal())
        .await?;
    Ok(())
}
