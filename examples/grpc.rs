//! A tonic gRPC server behind one `ApiKeyLayer` with a per-method scope table:
//! an in-memory key store, demo keys printed at start, and a service
//! (proto/demo.proto) whose methods need different scopes.
//!
//! ```sh
//! cargo run --example grpc            # BIND=127.0.0.1:0 for any free port
//! python3 scripts/grpc_client.py WhoAmI --key "$API_KEY_AI"
//! ```
//!
//! | method | policy |
//! |---|---|
//! | `/demo.Assistant/Translate` | any of `yc.ai.translate.execute`, `yc.ai.foundationModels.execute` |
//! | `/demo.Assistant/Generate` | `yc.ai.foundationModels.execute` |
//! | `/demo.Assistant/WhoAmI` | any valid key |

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tower_api_key::auth::MethodPolicies;
use tower_api_key::scope::ScopeSet;
use tower_api_key::store::{KeyStore, MemoryStore, NewKey};
use tower_api_key::{Authenticator, Caller};

/// The code generated from proto/demo.proto (checked in; see tests/grpc_codegen.rs).
mod pb {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/generated/demo.rs"
    ));
}

use pb::assistant_server::{Assistant, AssistantServer};
use pb::{
    GenerateReply, GenerateRequest, TranslateReply, TranslateRequest, WhoAmIReply, WhoAmIRequest,
};

const TRANSLATE: &str = "yc.ai.translate.execute";
const FOUNDATION_MODELS: &str = "yc.ai.foundationModels.execute";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_api_key=debug".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let store = MemoryStore::new();
    let auth = Authenticator::new(store.clone())
        .with_positive_ttl(Duration::from_secs(60))
        .with_negative_ttl(Duration::from_secs(5));

    // One policy per method; a malformed path fails here, at start-up.
    // Unlisted methods default to unscoped keys only.
    let methods = MethodPolicies::builder()
        .require_any("/demo.Assistant/Translate", [TRANSLATE, FOUNDATION_MODELS])
        .require_any("/demo.Assistant/Generate", [FOUNDATION_MODELS])
        .any_valid_key("/demo.Assistant/WhoAmI")
        .build()?;

    mint_demo_keys(&store).await?;

    let bind: SocketAddr = std::env::var("BIND")
        .unwrap_or_else(|_| "127.0.0.1:50051".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    Server::builder()
        .layer(auth.layer(methods))
        .add_service(AssistantServer::new(DemoAssistant))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown_signal())
        .await?;
    Ok(())
}

/// Creates one key per demo case and prints each once, as the real service would.
async fn mint_demo_keys(store: &MemoryStore) -> Result<(), Box<dyn std::error::Error>> {
    let demo = [
        (
            "TRANSLATE",
            NewKey::new("sa-translator").with_scopes(ScopeSet::new([TRANSLATE])?),
        ),
        (
            "AI",
            NewKey::new("sa-assistant").with_scopes(ScopeSet::new([FOUNDATION_MODELS])?),
        ),
        ("UNSCOPED", NewKey::new("sa-legacy")),
        (
            "EXPIRING",
            NewKey::new("sa-translator")
                .with_scopes(ScopeSet::new([TRANSLATE])?)
                .with_expires_at(SystemTime::now() + Duration::from_secs(5)),
        ),
    ];
    for (name, new) in demo {
        let created = store
            .create(new.with_description(format!("grpc example {name}")))
            .await?;
        println!("API_KEY_{name}={}", created.key.expose_secret());
    }
    Ok(())
}

struct DemoAssistant;

/// The identity the layer put in the request's extensions (tonic keeps the
/// HTTP request's extensions). With the crate's `tonic` feature,
/// `tower_api_key::auth::grpc::caller(&request)?` does the same.
fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::internal("the service is not behind an ApiKeyLayer"))
}

#[tonic::async_trait]
impl Assistant for DemoAssistant {
    async fn translate(
        &self,
        request: Request<TranslateRequest>,
    ) -> Result<Response<TranslateReply>, Status> {
        let service_account_id = caller(&request)?.service_account_id().to_string();
        let TranslateRequest {
            text,
            target_language,
        } = request.into_inner();
        Ok(Response::new(TranslateReply {
            text: format!("[{target_language}] {text}"),
            service_account_id,
        }))
    }

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateReply>, Status> {
        let service_account_id = caller(&request)?.service_account_id().to_string();
        let prompt = request.into_inner().prompt;
        Ok(Response::new(GenerateReply {
            text: format!("a story about {prompt}"),
            service_account_id,
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(WhoAmIReply {
            service_account_id: caller.service_account_id().to_string(),
            key_id: caller.key_id().to_string(),
            scopes: caller.scopes().iter().map(|s| s.to_string()).collect(),
        }))
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    eprintln!("shutting down");
}
