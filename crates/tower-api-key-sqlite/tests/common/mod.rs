//! The support code these tests share with the root crate's integration
//! tests (tests/common there), read from there: issue 20's management race
//! for any store, and the real server on 127.0.0.1 it runs against.
// Each test file uses only some of it.
#![allow(dead_code)]

#[path = "../../../../tests/common/grant_race.rs"]
pub mod grant_race;
#[path = "../../../../tests/common/logs.rs"]
pub mod logs;
#[path = "../../../../tests/common/tcp.rs"]
pub mod tcp;

#[path = "../../../../tests/common/reply.rs"]
mod reply;

pub use reply::Reply;
