//! The route table: every method and path the server answers, in one
//! place ([`resolve`]), and the decoding of a path into its segments.

use super::*;

/// A route: what a method on a path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route<'a> {
    /// `GET /` (or `GET /index.html`): the ballot page
    Page,
    /// `GET /votes`
    Tally,
    /// `POST /votes` `{"candidate", "voter"}`
    Vote,
    /// `POST /votes/reset` (admin)
    Reset,
    /// `GET /candidates`
    Candidates,
    /// `POST /candidates` `{"name", "members"}` (admin)
    Create,
    /// `DELETE /candidates/<name>` (admin)
    Delete(&'a str),
    /// `POST /candidates/<name>/members` with a member (admin)
    AddMember(&'a str),
    /// `DELETE /candidates/<name>/members` with a member (admin)
    RemoveMember(&'a str),
    /// `GET /schedule`
    Schedule,
    /// `GET /stats`
    Stats,
    /// `GET /events`: a stream of the standing and the shares
    Events,
}

/// The route table: every route the server answers, in one place.
pub(super) fn resolve<'a>(method: &str, path: &[&'a str]) -> Option<Route<'a>> {
    Some(match (method, path) {
        ("GET", [] | ["index.html"]) => Route::Page,
        ("GET", ["votes"]) => Route::Tally,
        ("POST", ["votes"]) => Route::Vote,
        ("POST", ["votes", "reset"]) => Route::Reset,
        ("GET", ["candidates"]) => Route::Candidates,
        ("POST", ["candidates"]) => Route::Create,
        ("DELETE", ["candidates", name]) => Route::Delete(name),
        ("POST", ["candidates", name, "members"]) => Route::AddMember(name),
        ("DELETE", ["candidates", name, "members"]) => Route::RemoveMember(name),
        ("GET", ["schedule"]) => Route::Schedule,
        ("GET", ["stats"]) => Route::Stats,
        ("GET", ["events"]) => Route::Events,
        _ => return None,
    })
}

pub(super) const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];

impl Route<'_> {
    pub(super) fn is_admin(self) -> bool {
        matches!(
            self,
            Route::Reset
                | Route::Create
                | Route::Delete(_)
                | Route::AddMember(_)
                | Route::RemoveMember(_)
        )
    }
}


/// The non-empty segments of a path, percent-decoded.
pub(super) fn split_path(path: &str) -> Result<Vec<String>, ApiError> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(s)
                .ok_or_else(|| ApiError::BadRequest("malformed percent-encoding".into()))
        })
        .collect()
}

pub(super) fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
