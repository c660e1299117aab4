//! Parsing a request's head, strictly and within its bounds, and the
//! reason phrases of the statuses the server sends.

use super::*;

impl From<io::Error> for ApiError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ApiError::Timeout,
            _ => ApiError::BadRequest(format!("reading the request: {e}")),
        }
    }
}

/// The length of the head (through its empty line), if `buf` holds one.
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .find_map(|(i, _)| match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        })
}

pub(super) fn parse_head(head: &[u8], limits: &Limits) -> Result<Request, ApiError> {
    if head.len() > limits.max_head {
        return Err(ApiError::HeadTooLarge);
    }
    let bad = |why: &str| ApiError::BadRequest(why.to_owned());
    let text = std::str::from_utf8(head).map_err(|_| bad("the request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    if !target.starts_with('/') {
        return Err(bad("the request target must be a path"));
    }
    let http_1_0 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err(ApiError::VersionNotSupported),
        _ => return Err(bad("malformed request line")),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(bad("folded header lines are not allowed"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("malformed header name"));
        }
        if headers.len() >= limits.max_headers {
            return Err(ApiError::HeadTooLarge);
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let has = |name: &str| {
        headers
            .iter()
            .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(name))
    };
    if has("transfer-encoding") {
        return Err(ApiError::LengthRequired);
    }
    let mut content_length = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("malformed content-length"));
        }
        // Too many digits is simply too large.
        let n = value.parse::<u64>().unwrap_or(u64::MAX);
        if content_length.is_some_and(|c| c != n) {
            return Err(bad("conflicting content-length headers"));
        }
        content_length = Some(n);
    }
    let tokens = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect()
    };
    let connection = tokens("connection");
    let keep_alive = if http_1_0 {
        connection.iter().any(|t| t == "keep-alive")
    } else {
        !connection.iter().any(|t| t == "close")
    };
    let expect_continue = tokens("expect").iter().any(|t| t == "100-continue");
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(Request {
        method: method.to_owned(),
        path,
        headers,
        content_length: content_length.unwrap_or(0),
        keep_alive,
        expect_continue,
        peer: None,
    })
}

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\nbody"), Some(21));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn heads_are_parsed_strictly() {
        let limits = Limits::default();
        let ok = parse_head(
            b"POST /votes?x=1 HTTP/1.1\r\nContent-Type: application/json\r\ncontent-length: 12\r\n\
              Connection: Keep-Alive, close\r\n\r\n",
            &limits,
        )
        .expect("valid head");
        assert_eq!((ok.method.as_str(), ok.path.as_str()), ("POST", "/votes"));
        assert_eq!(ok.header("CONTENT-TYPE"), Some("application/json"));
        assert_eq!(ok.content_length(), 12);
        assert!(!ok.keep_alive);
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n", &limits).expect("valid");
        assert!(!old.keep_alive, "HTTP/1.0 closes by default");
        let huge = parse_head(
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            &limits,
        )
        .expect("valid");
        assert_eq!(huge.content_length(), u64::MAX);
        for (head, code) in [
            (&b"GET /\r\n\r\n"[..], "bad_request"),
            (b"get / HTTP/1.1\r\n\r\n", "bad_request"),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", "bad_request"),
            (b"GET / HTTP/2.0\r\n\r\n", "http_version_not_supported"),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "bad_request"),
            (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", "bad_request"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "bad_request",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "bad_request",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "length_required",
            ),
            (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", "bad_request"),
        ] {
            let err = parse_head(head, &limits).expect_err(&String::from_utf8_lossy(head));
            assert_eq!(err.code(), code, "{}", String::from_utf8_lossy(head));
        }
        let many: String = (0..=limits.max_headers)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let err = parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), &limits)
            .expect_err("too many headers");
        assert_eq!(err.code(), "headers_too_large");
    }
}
