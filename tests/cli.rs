//! The `tower-api-key` binary, run as a user would.
