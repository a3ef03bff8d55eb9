//! API errors: a status code and a JSON body `{"error": "..."}` a user can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
    /// Seconds after which a retry may succeed (429/503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A retryable error with `Retry-After`.
    pub fn retry(status: StatusCode, after_secs: u64, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: Some(after_secs),
        }
    }
}

/// The message of an error response, kept in its extensions so that the
/// route guard can record refused changes in the audit log.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let message = ErrorMessage(self.message);
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tally\""),
            );
        }
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp.extensions_mut().insert(message);
        resp
    }
}

impl From<crate::control::ControlError> for ApiError {
    fn from(e: crate::control::ControlError) -> Self {
        use crate::control::ControlError as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::Invalid(_) => StatusCode::BAD_REQUEST,
            E::Forbidden(_) => StatusCode::FORBIDDEN,
            E::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            E::Db(_) | E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("control plane: {e}");
            return Self::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                5,
                "the control database failed; retry shortly (the server log has details)",
            );
        }
        Self::new(status, e.to_string())
    }
}

impl From<tally_store::StoreError> for ApiError {
    fn from(e: tally_store::StoreError) -> Self {
        use tally_store::StoreError as E;
        match e {
            E::Overloaded(why) => Self::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                1,
                format!("server is overloaded ({why}); retry after 1 s"),
            ),
            E::Closed => Self::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                5,
                "server is shutting down; retry shortly",
            ),
            other => Self::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                30,
                format!("storage error: {other}"),
            ),
        }
    }
}
