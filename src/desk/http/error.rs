//! The one error type of the HTTP layer: what went wrong, in words a client
//! developer can act on, with the status that matches.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use cs_core::store::StoreError;

use crate::desk::attachments::AttachmentError;
use crate::desk::error::{DeskError, ErrorKind, PresenceError, RoutingError};
use crate::desk::identity::IdentityError;
use crate::desk::quotas::QuotaError;
use crate::desk::reports::{RatingError, ReportError};
use crate::desk::tokens::TokenError;

/// Why a request failed: `{"error": CODE, "message": WORDS}` with a status;
/// a 429 adds `retry_after_ms` and a `Retry-After` header.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure, which picks the status.
    pub kind: ErrorKind,
    /// What went wrong and what to do.
    pub message: String,
    /// When a retry can succeed, for [`ErrorKind::RateLimited`].
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429: a limit was reached; a retry after `retry_after` can succeed.
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorKind::RateLimited, message)
        }
    }

    /// 401.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// 413: the body is larger than the desk takes.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self.message, "request failed");
        }
        let Some(retry_after) = self.retry_after else {
            return (
                status,
                Json(json!({ "error": self.kind.code(), "message": self.message })),
            )
                .into_response();
        };
        // Retry-After is in whole seconds; rounded up, so a client that obeys it is not refused again.
        let seconds = retry_after.as_millis().div_ceil(1000).max(1);
        (
            status,
            [(header::RETRY_AFTER, seconds.to_string())],
            Json(json!({
                "error": self.kind.code(),
                "message": self.message,
                "retry_after_ms": u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
            })),
        )
            .into_response()
    }
}

impl From<DeskError> for ApiError {
    fn from(e: DeskError) -> Self {
        Self {
            retry_after: e.retry_after(),
            ..Self::new(e.kind(), e.to_string())
        }
    }
}

impl From<RoutingError> for ApiError {
    fn from(e: RoutingError) -> Self {
        Self {
            retry_after: e.retry_after(),
            ..Self::new(e.kind(), e.to_string())
        }
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        RoutingError::from(e).into()
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        Self::unauthenticated(e.to_string())
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::SignInNotOffered => Self::not_found(e.to_string()),
            IdentityError::Unavailable(_) => Self::unavailable(e.to_string()),
        }
    }
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Backend(e) => e.into(),
            e => {
                let retry_after = e.retry_after();
                Self::rate_limited(e.to_string(), retry_after)
            }
        }
    }
}

impl From<AttachmentError> for ApiError {
    fn from(e: AttachmentError) -> Self {
        match e {
            AttachmentError::NotFound => Self::not_found(e.to_string()),
            AttachmentError::TooLarge { .. } => Self::too_large(e.to_string()),
            AttachmentError::Aborted(_) => Self::bad_request(e.to_string()),
            AttachmentError::Unavailable(_) | AttachmentError::Corrupt(_) => {
                Self::unavailable(e.to_string())
            }
        }
    }
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

impl From<RatingError> for ApiError {
    fn from(e: RatingError) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}
