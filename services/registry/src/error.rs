use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    Database(sqlx::Error),
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        if connection_lost(&e) {
            check_connections_for(CHECK_CONNECTIONS_FOR_MS);
        }
        RegistryError::Database(e)
    }
}

/// How long, after a query found its connection gone, every pooled connection is checked before
/// use.
const CHECK_CONNECTIONS_FOR_MS: i64 = 5_000;

/// Until when (Unix ms) the pool pings each connection before handing it out. The pool
/// normally checks only connections that sat idle (see `lib.rs`); when Postgres restarts or
/// fails over, every connection dies at once, and the first call to meet a dead one sets
/// this so that the others are found and replaced before they fail a call too.
static CHECK_CONNECTIONS_UNTIL: AtomicI64 = AtomicI64::new(0);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn check_connections_for(ms: i64) {
    CHECK_CONNECTIONS_UNTIL.fetch_max(now_ms() + ms, Ordering::Relaxed);
}

/// Whether a connection lost recently means each pooled connection is to be checked before use.
pub fn checking_connections() -> bool {
    CHECK_CONNECTIONS_UNTIL.load(Ordering::Relaxed) > now_ms()
}

/// The connection is gone: an I/O error, or Postgres ending the session (class 08, connection
/// exception; 57P01-57P04, an administrator, a crash, a start-up or a dropped database).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
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
                    sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                        Status::unavailable("database unavailable")
                    }
                    err if connection_lost(err) => Status::unavailable("database unavailable"),
                    _ => Status::internal("database error"),
                }
            }
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_unavailable_and_turns_on_the_checks() {
        let lost = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(connection_lost(&lost));
        let status = Status::from(RegistryError::from(lost));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(checking_connections());

        let other = sqlx::Error::RowNotFound;
        assert!(!connection_lost(&other));
        assert_eq!(
            Status::from(RegistryError::from(other)).code(),
            tonic::Code::Internal
        );
    }
}
