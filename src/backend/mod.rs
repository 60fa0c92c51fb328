//! Where shared state lives: each backend keeps its connection, its ledger
//! and (for Redis) its rate limiter together. The `Ledger` trait they
//! implement is in `crate::ledger`; the rate limiter is chosen in
//! `crate::rate_limit`.

mod owner_cache;
pub mod redb;
pub mod redis;
