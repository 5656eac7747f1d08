use tonic::Status;

/// Everything a registry call can fail with, each mapped to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("invalid or missing token")]
    Unauthenticated,
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) => Status::not_found(e.to_string()),
            RegistryError::Unauthenticated => Status::unauthenticated(e.to_string()),
            RegistryError::PermissionDenied(m) => Status::permission_denied(m),
            RegistryError::InvalidArgument(m) => Status::invalid_argument(m),
            RegistryError::Database(ref err) => {
                tracing::error!(error = %err, "registry database error");
                // Pool exhaustion and lost connections are worth a retry; the rest is internal.
                match err {
                    sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                        Status::unavailable("database unavailable")
                    }
                    _ => Status::internal("database error"),
                }
            }
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
