//! The support code of the integration tests, one module for all of them:
//! each test file says `mod common;` and uses the parts it needs.
//!
//! - [`Reply`]: a response read whole, with a `Debug` that hides key material;
//! - [`http`]: the in-process fixture (counting verifier, manual clock, an
//!   axum app with one route per scope policy) and its assertions;
//! - [`tcp`]: a real server on 127.0.0.1 and a client that records responses;
//! - [`grant_race`]: issue 20's three-request management race, for any store;
//! - [`hooked`]: a memory store with a hook before its writes;
//! - [`logs`]: log output captured in memory;
//! - [`fuzz`]: the fuzzing entry points, also included by path by the
//!   cargo-fuzz targets in `fuzz/`.
// Each test file uses only some of it.
#![allow(dead_code)]

pub mod fuzz;
#[cfg(feature = "management")]
pub mod grant_race;
pub mod hooked;
pub mod http;
pub mod logs;
pub mod tcp;

mod reply;

pub use reply::Reply;
