//! Every refusal the API makes, each with one status and a `{"msg": ...}` body.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("Request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    /// Over the project's rate limit; retry after the duration.
    #[error("Rate limit exceeded; retry later")]
    TooManyRequests(std::time::Duration),
    #[error("Internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Maps a registry answer onto the API; `what` names the thing looked up.
    pub fn from_registry(status: tonic::Status, what: &'static str) -> Self {
        use tonic::Code;
        match status.code() {
            Code::NotFound => ApiError::NotFound(what),
            Code::Unauthenticated | Code::PermissionDenied => ApiError::Unauthorized,
            Code::InvalidArgument => ApiError::BadRequest(status.message().to_string()),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                ApiError::Unavailable("The registry is unavailable; retry shortly".into())
            }
            _ => ApiError::Internal(format!("registry: {status}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut response =
            (status, Json(serde_json::json!({ "msg": self.to_string() }))).into_response();
        let retry_after = match &self {
            ApiError::Unavailable(_) => Some(1),
            ApiError::TooManyRequests(wait) => Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
