//! The one place where outcomes become HTTP answers. Every error body is
//! `{"error":"<code>","message":"<readable>"}` and never echoes the payload or a secret.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;

use crate::event::EventError;
use crate::sink::{ErrorClass, SinkError};
use crate::verify::VerifyError;

/// Why a webhook request was not answered 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The client address is outside `http.allow_networks`.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// The request line and headers are larger than `http.max_header_bytes`.
    HeadersTooLarge {
        limit: usize,
    },
    PayloadTooLarge {
        limit: u64,
    },
    /// The body did not arrive within `http.body_read_timeout`.
    BodyTimeout,
    BadBody(String),
    Signature(VerifyError),
    Event(EventError),
    /// Some target failed; the worst class decides the status.
    Publish {
        class: ErrorClass,
        message: String,
    },
    /// The request could not be served at all (shutting down, overloaded).
    Unavailable(String),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Forbidden => StatusCode::FORBIDDEN,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BadBody(_) | Rejection::Signature(_) | Rejection::Event(_) => StatusCode::BAD_REQUEST,
            Rejection::Publish {
                class: ErrorClass::Permanent,
                ..
            } => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::Publish {
                class: ErrorClass::Retryable,
                ..
            }
            | Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Machine-readable code, also the `reason` label of `hookbridge_rejected_total`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Forbidden => "forbidden",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::HeadersTooLarge { .. } => "headers_too_large",
            Rejection::PayloadTooLarge { .. } => "payload_too_large",
            Rejection::BadBody(_) => "bad_body",
            Rejection::Signature(e) => e.code(),
            Rejection::Event(e) => e.code(),
            Rejection::Publish {
                class: ErrorClass::Permanent,
                ..
            } => "publish_rejected",
            Rejection::Publish {
                class: ErrorClass::Retryable,
                ..
            } => "publish_unavailable",
            Rejection::Unavailable(_) => "unavailable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Rejection::Forbidden => "this address may not call the webhook port".into(),
            Rejection::BodyTimeout => "the request body did not arrive in time".into(),
            Rejection::NotFound => "no webhook endpoint at this path".into(),
            Rejection::MethodNotAllowed => "webhook endpoints accept POST only".into(),
            Rejection::HeadersTooLarge { limit } => {
                format!("the request line and headers are larger than {limit} bytes")
            }
            Rejection::PayloadTooLarge { limit } => format!("the body is larger than {limit} bytes"),
            Rejection::BadBody(m) => m.clone(),
            Rejection::Signature(e) => e.to_string(),
            Rejection::Event(e) => e.to_string(),
            Rejection::Publish { message, .. } => message.clone(),
            Rejection::Unavailable(m) => m.clone(),
        }
    }

    /// Builds the answer; `retry_after` is the `Retry-After` seconds for 503s.
    pub fn into_response(self, retry_after: u64) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut resp = json(
            status,
            &ErrorBody {
                error: self.code(),
                message: &self.message(),
            },
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
        }
        if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
            // The body was not read: the connection cannot carry another request.
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }
}

impl From<SinkError> for Rejection {
    fn from(e: SinkError) -> Self {
        Rejection::Publish {
            class: e.class,
            message: e.message,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// The 200 answer.
pub fn received() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(br#"{"received":true}"#)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A plain-text answer.
pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
