//! Cleanup: the plan a lifecycle policy makes of the cached inventory
//! ([`plan`]) and the worker that carries out cleanup runs ([`worker`]).

pub mod plan;
pub mod worker;
