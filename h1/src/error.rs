//! Why a request could not be read, and the one place that maps each kind
//! to the status code the client gets.

use http::StatusCode;

/// A request the front end refuses, or a connection it gives up on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed request line, header, framing or chunk: 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Request line longer than the head limit: 414.
    #[error("request line too long")]
    UriTooLong,
    /// Header section longer than the head limit, or too many fields: 431.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// Body longer than the body limit: 413.
    #[error("request body too large")]
    BodyTooLarge,
    /// A transfer coding other than `chunked`: 501.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// An `Expect` other than `100-continue`: 417.
    #[error("unsupported expectation")]
    ExpectationFailed,
    /// An HTTP version other than 1.0 or 1.1: 505.
    #[error("HTTP version not supported")]
    Version,
    /// The client took too long to send the request head: the connection
    /// closes.
    #[error("timed out reading the request")]
    Timeout,
    /// The client paused too long while sending the body: 408.
    #[error("timed out reading the request body")]
    BodyTimeout,
    /// The client closed the connection in the middle of a request.
    #[error("connection closed mid-request")]
    Incomplete,
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The status to answer with before closing, if any answer is owed.
    pub fn status(&self) -> Option<StatusCode> {
        Some(match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::UriTooLong => StatusCode::URI_TOO_LONG,
            Error::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Error::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Error::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::Timeout | Error::Incomplete | Error::Io(_) => return None,
        })
    }
}

impl From<httparse::Error> for Error {
    fn from(err: httparse::Error) -> Self {
        match err {
            httparse::Error::TooManyHeaders => Error::HeadersTooLarge,
            httparse::Error::Version => Error::Version,
            httparse::Error::HeaderName => Error::BadRequest("invalid header name"),
            httparse::Error::HeaderValue => Error::BadRequest("invalid header value"),
            httparse::Error::NewLine => Error::BadRequest("invalid line ending"),
            httparse::Error::Status => Error::BadRequest("invalid status"),
            httparse::Error::Token => Error::BadRequest("invalid method or request target"),
        }
    }
}
