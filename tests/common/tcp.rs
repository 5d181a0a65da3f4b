//! A real HTTP server on 127.0.0.1 and a small client that remembers every
//! response it got (the management, grants and metrics tests).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::Reply;

/// Serves `app` on a free port of 127.0.0.1 until the test ends.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// An HTTP/1 client that records every response (status, headers, body).
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
            addr,
            seen: Arc::default(),
        }
    }

    /// Sends `body` with `content_type`, authenticated with `key` if given.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        self.raw_with(method, path, key, content_type, &[], body)
            .await
    }

    /// Sends JSON (or nothing) with extra `headers`.
    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let (content_type, body) = match body {
            Some(body) => (Some("application/json"), Bytes::from(body.to_string())),
            None => (None, Bytes::new()),
        };
        self.raw_with(method, path, key, content_type, headers, body)
            .await
    }

    async fn raw_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("http://{}{}", self.addr, path));
        if let Some(key) = key {
            request = request.header("authorization", format!("Api-Key {key}"));
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = self.http.request(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        self.seen
            .lock()
            .unwrap()
            .push(format!("{status} {headers:?} {text}"));
        Reply {
            status,
            headers,
            body,
            rejection: None,
        }
    }

    /// Sends JSON (or nothing).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        match body {
            Some(body) => {
                self.raw(
                    method,
                    path,
                    key,
                    Some("application/json"),
                    body.to_string(),
                )
                .await
            }
            None => self.raw(method, path, key, None, Bytes::new()).await,
        }
    }

    /// How many recorded responses contain `needle`.
    pub fn responses_containing(&self, needle: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains(needle))
            .count()
    }
}
