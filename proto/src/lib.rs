//! The registry's gRPC contract (`workhook.registry.v1`), generated at build time.
#![allow(clippy::all, missing_docs)]

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("workhook.registry.v1");
    }
}

pub use registry::v1::*;

impl From<&workhook_core::Envelope> for Envelope {
    fn from(e: &workhook_core::Envelope) -> Self {
        Envelope {
            task_id: e.task_id.clone(),
            project_id: e.project_id.clone(),
            code_id: e.code_id.clone(),
            code_name: e.code_name.clone(),
            code_rev: e.code_rev,
            priority: i32::from(e.priority),
            timeout: e.timeout as i32,
            delay: e.delay as i32,
            label: e.label.clone(),
            cluster: e.cluster.clone(),
            received_at: e.received_at,
            source: e.source.as_str().to_string(),
            retry_of: e.retry_of.clone(),
            retry_count: e.retry_count as i32,
            schedule_id: e.schedule_id.clone(),
            verified_by: e.verified_by.clone(),
            request: e.request.clone(),
            payload_ref: e.payload_ref.clone(),
        }
    }
}
