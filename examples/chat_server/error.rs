//! One error type for every handler: what went wrong, in words a client
//! developer can act on, with the HTTP status that matches.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use cs::core::router::RouterError;
use cs::core::store::StoreError;
use cs::transport::{PathError, SubmitError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid token or session.
    #[error("{0}")]
    Unauthenticated(String),
    /// Signed in, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// It conflicts with the current state (already closed, not assigned).
    #[error("{0}")]
    Conflict(String),
    /// The server is flooded, stopping, or its store is down: retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl ApiError {
    /// The machine-readable code clients see in `error`.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// The words clients see in `message`.
    pub fn message(&self) -> &str {
        match self {
            ApiError::Unauthenticated(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::BadRequest(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m) => m,
        }
    }

    /// The error [`ApiError::code`] names, as another node reported it; an
    /// unknown code (a newer node's) is a failure to retry.
    pub fn from_code(code: &str, message: String) -> Self {
        match code {
            "unauthenticated" => ApiError::Unauthenticated(message),
            "forbidden" => ApiError::Forbidden(message),
            "not_found" => ApiError::NotFound(message),
            "bad_request" => ApiError::BadRequest(message),
            "conflict" => ApiError::Conflict(message),
            _ => ApiError::Unavailable(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        (
            status,
            Json(json!({ "error": code, "message": self.to_string() })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownConversation(id) => {
                ApiError::NotFound(format!("no conversation {id}"))
            }
            other => ApiError::Unavailable(format!("the store failed: {other}; retry shortly")),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Rejected(PathError::UnknownConversation(id)) => {
                ApiError::NotFound(format!("no conversation {id}"))
            }
            SubmitError::Rejected(
                e @ (PathError::IllegalChange(_) | PathError::Closed(_) | PathError::Invalid(_)),
            ) => ApiError::Conflict(e.to_string()),
            SubmitError::Rejected(e @ PathError::Unauthorized { .. }) => {
                ApiError::Forbidden(e.to_string())
            }
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        match e {
            RouterError::UnknownAgent { .. } => ApiError::NotFound(e.to_string()),
            _ => ApiError::Conflict(e.to_string()),
        }
    }
}
