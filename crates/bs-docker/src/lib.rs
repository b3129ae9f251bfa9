//! bs-docker: the Docker engine, its config, networks and service
//! containers, through the engine's API.
//!
//! [`engine`] is also the library bs-jobs uses to talk to the engine.

pub mod engine;
