//! Lifecycle policy evaluation (in progress).
