//! Why a request is refused ([`ApiError`]): its status, its code and its
//! JSON answer.

use super::*;

/// Why a request is refused: one variant per status and code.
#[derive(Debug)]
pub(super) enum ApiError {
    NotFound,
    /// The allowed methods, for the `Allow` header.
    MethodNotAllowed(String),
    Unauthorized,
    /// The request cannot be framed or routed (not the JSON: see `Malformed`).
    BadRequest(String),
    /// The body is not the JSON the route expects.
    Malformed(String),
    /// The limit, in bytes.
    PayloadTooLarge(usize),
    UnsupportedMediaType,
    /// How long until the voter may vote again.
    RateLimited(Duration),
    Ballot(BallotError),
    /// The journal could not record the change.
    Journal,
    Timeout,
    LengthRequired,
    HeadTooLarge,
    VersionNotSupported,
    /// Too many connections.
    Unavailable,
    /// A bug answering the request (logged).
    Internal,
    /// The `Host` header names a host this server does not answer for.
    ForeignHost(String),
    /// A state-changing request from a page of another origin.
    CrossOrigin(String),
    /// Too many distinct voters within the vote interval.
    TooManyVoters,
}

impl ApiError {
    pub(super) fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::Malformed(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::ForeignHost(_) | ApiError::CrossOrigin(_) => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Timeout => 408,
            ApiError::LengthRequired => 411,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::RateLimited(_) | ApiError::TooManyVoters => 429,
            ApiError::HeadTooLarge => 431,
            ApiError::Journal => 500,
            ApiError::Unavailable => 503,
            ApiError::Internal => 500,
            ApiError::VersionNotSupported => 505,
            ApiError::Ballot(e) => match e {
                BallotError::InvalidName(_)
                | BallotError::InvalidVoter
                | BallotError::InvalidMember(_) => 400,
                BallotError::UnknownCandidate(_) | BallotError::AbsentMember { .. } => 404,
                BallotError::DuplicateCandidate(_)
                | BallotError::DuplicateMember { .. }
                | BallotError::TooManyCandidates
                | BallotError::TooManyMembers(_)
                | BallotError::TooManyVoters => 409,
                BallotError::NoSuchProcess(_) => 422,
            },
        }
    }

    pub(super) fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Malformed(_) => "malformed_json",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Ballot(e) => e.code(),
            ApiError::Journal => "journal_error",
            ApiError::Timeout => "request_timeout",
            ApiError::LengthRequired => "length_required",
            ApiError::HeadTooLarge => "headers_too_large",
            ApiError::VersionNotSupported => "http_version_not_supported",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal_error",
            ApiError::ForeignHost(_) => "foreign_host",
            ApiError::CrossOrigin(_) => "cross_origin",
            ApiError::TooManyVoters => "too_many_voters",
        }
    }

    pub(super) fn response(&self) -> Response {
        let mut response = json_response(
            self.status(),
            &ErrorBody { error: self.to_string(), code: self.code().to_owned() },
        );
        match self {
            ApiError::MethodNotAllowed(allow) => response.headers.push(("Allow", allow.clone())),
            ApiError::Unauthorized => response.headers.push(("WWW-Authenticate", "Bearer".into())),
            ApiError::TooManyVoters => response.headers.push(("Retry-After", "1".into())),
            ApiError::RateLimited(wait) => {
                let secs = wait.as_millis().div_ceil(1000).max(1);
                response.headers.push(("Retry-After", secs.to_string()));
            }
            _ => {}
        }
        response
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::NotFound => write!(f, "no such route"),
            ApiError::MethodNotAllowed(allow) => {
                write!(f, "method not allowed here (allowed: {allow})")
            }
            ApiError::Unauthorized => {
                write!(f, "this route needs Authorization: Bearer <admin token>")
            }
            ApiError::BadRequest(why) => write!(f, "bad request: {why}"),
            ApiError::Malformed(why) => write!(f, "malformed body: {why}"),
            ApiError::PayloadTooLarge(max) => write!(f, "the body is larger than {max} bytes"),
            ApiError::UnsupportedMediaType => write!(
                f,
                "a POST or DELETE must say Content-Type: application/json (even without a body)"
            ),
            ApiError::ForeignHost(host) => write!(
                f,
                "this server does not answer for host {host:?} (allowed: IP addresses, \
                 localhost, and names given with --allow-host)"
            ),
            ApiError::CrossOrigin(origin) => {
                write!(f, "changes are not accepted from pages of another origin ({origin})")
            }
            ApiError::TooManyVoters => write!(
                f,
                "too many distinct voters within the vote interval; retry later"
            ),
            ApiError::RateLimited(wait) => {
                write!(f, "this voter voted too recently; retry in {} ms", wait.as_millis())
            }
            ApiError::Ballot(e) => e.fmt(f),
            ApiError::Journal => {
                write!(f, "the change could not be recorded on disk; nothing changed")
            }
            ApiError::Timeout => write!(f, "the request took too long"),
            ApiError::LengthRequired => {
                write!(f, "send the body with a Content-Length, not chunked")
            }
            ApiError::HeadTooLarge => write!(f, "the request line and headers are too large"),
            ApiError::VersionNotSupported => write!(f, "only HTTP/1.0 and HTTP/1.1 are served"),
            ApiError::Unavailable => write!(f, "too many connections; retry later"),
            ApiError::Internal => write!(f, "the server failed answering this request"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Ballot(e) => ApiError::Ballot(e),
            StoreError::Journal(e) => {
                log::error!("voting server: {e}");
                ApiError::Journal
            }
        }
    }
}
