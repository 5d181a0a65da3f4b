//! The demo gRPC service of `proto/demo.proto`, shared by `examples/grpc.rs`
//! and `examples/axum_tonic.rs`: each handler reads the `Caller` that the
//! API-key layer put in front of it.

use tonic::{Request, Response, Status};
use tower_api_key::Caller;

/// The code generated from proto/demo.proto (checked in; see tests/grpc_codegen.rs).
pub mod pb {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/generated/demo.rs"
    ));
}

use pb::assistant_server::Assistant;
pub use pb::assistant_server::AssistantServer;
use pb::{
    GenerateReply, GenerateRequest, TranslateReply, TranslateRequest, WhoAmIReply, WhoAmIRequest,
};

#[derive(Clone, Copy)]
pub struct DemoAssistant;

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
