//! The registry's gRPC contract (`workhook.registry.v1`), generated at build time.
#![allow(clippy::all, missing_docs)]

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("workhook.registry.v1");
    }
}

pub use registry::v1::*;
