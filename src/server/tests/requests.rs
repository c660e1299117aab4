//! Requests refused with a 4xx: malformed, oversized or hostile input, wrong
//! methods and media types, unknown routes and badly encoded paths.

use std::net::Shutdown;

use super::*;

#[test]
fn malformed_bodies_are_400_and_change_nothing() {
    let f = start(&["blue"]);
    let cases = [
        "{",
        "[]",
        "null",
        r#"{"candidate": "blue"}"#,
        r#"{"candidate": "blue", "voter": "a", "extra": 1}"#,
        r#"{"candidate": 1, "voter": "a"}"#,
        "\u{feff}{}",
        &format!("{}1{}", "[".repeat(1000), "]".repeat(1000)),
    ];
    for body in cases {
        let r =
            call_with(f.addr(), "POST", "/votes", &[("Content-Type", "application/json")], body);
        assert_eq!((r.status, r.code()), (400, "malformed_json"), "{body}: {r:?}");
    }
    let r = call_with(f.addr(), "POST", "/votes", &[("Content-Type", "application/json")], "");
    assert_eq!((r.status, r.code()), (400, "malformed_json"), "empty body: {r:?}");
    let r = vote(f.addr(), "blue", "");
    assert_eq!((r.status, r.code()), (400, "invalid_voter"), "{r:?}");
    let r = call(f.addr(), "POST", "/candidates", Some(json!({"name": "a b"})));
    assert_eq!((r.status, r.code()), (400, "invalid_name"), "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates/blue/members",
        Some(json!({"kind": "comm", "comm": ""})),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_member"), "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates/blue/members",
        Some(json!({"kind": "thread", "tid": 1})),
    );
    assert_eq!((r.status, r.code()), (400, "malformed_json"), "{r:?}");
    assert_eq!(f.generation(), 1);
}

#[test]
fn oversized_bodies_are_413_without_being_read() {
    let f = start_with(&["blue"], test_limits(), |c| c.max_body = 64);
    let body = json!({"candidate": "blue", "voter": "v".repeat(64)}).to_string();
    let r = call_with(f.addr(), "POST", "/votes", &[("Content-Type", "application/json")], &body);
    assert_eq!((r.status, r.code()), (413, "payload_too_large"), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    // A declared body of 4 EiB: answered at once, nothing allocated, no abort.
    let r = raw(
        f.addr(),
        b"POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 4611686018427387904\r\n\r\n{",
    );
    assert_eq!((r.status, r.code()), (413, "payload_too_large"), "{r:?}");
    let r = raw(
        f.addr(),
        b"POST /votes HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200, "still serving");

    let f = start(&["blue"]);
    let body = format!(
        r#"{{"candidate": "blue", "voter": "{}"}}"#,
        "v".repeat(ServerConfig::DEFAULT_MAX_BODY)
    );
    let r = call_with(f.addr(), "POST", "/votes", &[("Content-Type", "application/json")], &body);
    assert_eq!(r.status, 413, "the default limit is {}", ServerConfig::DEFAULT_MAX_BODY);
}

#[test]
fn a_wrong_method_is_405_with_allow() {
    let f = start(&["blue"]);
    for (method, path, allow) in [
        ("PUT", "/votes", "GET, POST"),
        ("DELETE", "/votes", "GET, POST"),
        ("GET", "/votes/reset", "POST"),
        ("PATCH", "/candidates", "GET, POST"),
        ("GET", "/candidates/blue", "DELETE"),
        ("GET", "/candidates/blue/members", "POST, DELETE"),
        ("POST", "/schedule", "GET"),
        ("DELETE", "/stats", "GET"),
    ] {
        let r = call(f.addr(), method, path, None);
        assert_eq!((r.status, r.code()), (405, "method_not_allowed"), "{method} {path}: {r:?}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    let mut stream = connect(f.addr());
    stream.write_all(b"HEAD /votes HTTP/1.1\r\nConnection: close\r\n\r\n").expect("send");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD gets no body: {text}");
}

#[test]
fn a_body_that_is_not_json_is_415() {
    let f = start(&["blue"]);
    let body = r#"{"candidate": "blue", "voter": "ana"}"#;
    for headers in
        [&[("Content-Type", "text/plain")][..], &[], &[("Content-Type", "application/jsonx")]]
    {
        let r = call_with(f.addr(), "POST", "/votes", headers, body);
        assert_eq!((r.status, r.code()), (415, "unsupported_media_type"), "{headers:?}: {r:?}");
    }
    let r = call_with(
        f.addr(),
        "POST",
        "/votes",
        &[("content-type", "Application/JSON; charset=utf-8")],
        body,
    );
    assert_eq!(r.status, 200, "parameters and case are fine: {r:?}");
}

#[test]
fn unknown_routes_are_404() {
    let f = start(&["blue"]);
    for (method, path) in [
        ("GET", "/index.htm"),
        ("GET", "/ballot.html"),
        ("GET", "/favicon.ico"),
        ("GET", "/votes/blue/extra"),
        ("POST", "/candidates/blue/members/1"),
        ("GET", "/%2e%2e/etc/passwd"),
        ("BREW", "/coffee"),
    ] {
        let r = call(f.addr(), method, path, None);
        assert_eq!((r.status, r.code()), (404, "not_found"), "{method} {path}: {r:?}");
    }
    let r = call(f.addr(), "GET", "/votes/%zz", None);
    assert_eq!((r.status, r.code()), (400, "bad_request"), "{r:?}");
    let r = call(f.addr(), "GET", "/votes?pretty=1", None);
    assert_eq!(r.status, 200, "a query is ignored: {r:?}");
}

#[test]
fn hostile_input_gets_a_4xx_and_the_server_keeps_serving() {
    let limits = Limits { request_timeout: Duration::from_secs(1), ..test_limits() };
    let f = start_with(&["blue"], limits, |_| {});
    for (bytes, status) in [
        (&b"\x00\x01\x02garbage\r\n\r\n"[..], 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET /votes HTTP/1.1\r\nX: \xc3\x28\r\n\r\n", 400),
        (b"GET /vo\xfftes HTTP/1.1\r\n\r\n", 400),
        (b"POST /votes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"POST /votes HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
        (b"GET /votes%00 HTTP/1.1\r\n\r\n", 404),
    ] {
        let r = raw(f.addr(), bytes);
        assert_eq!(r.status, status, "{}: {r:?}", String::from_utf8_lossy(bytes));
    }
    let long = format!("GET /votes HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(raw(f.addr(), long.as_bytes()).status, 431);
    let endless = format!("GET /{}", "a".repeat(20_000));
    assert_eq!(raw(f.addr(), endless.as_bytes()).status, 431, "no end of head in sight");

    // A client that stops half-way holds nobody else up, and is cut off.
    let mut stalled = connect(f.addr());
    stalled.write_all(b"POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"cand").expect("send");
    let mut idle = connect(f.addr());
    idle.write_all(b"GET /vo").expect("send");
    let t = Instant::now();
    assert_eq!(call(f.addr(), "GET", "/votes", None).status, 200);
    assert!(t.elapsed() < Duration::from_millis(900), "served while others stall");
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200);
    let r = read_reply(&mut BufReader::new(stalled));
    assert_eq!((r.status, r.code()), (408, "request_timeout"), "{r:?}");
    assert_eq!(read_reply(&mut BufReader::new(idle)).status, 408);
    // A client that closes mid-body or before a request gets nothing.
    let mut gone = connect(f.addr());
    gone.write_all(
        b"POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{",
    )
    .expect("send");
    gone.shutdown(Shutdown::Write).expect("half-close");
    drop(connect(f.addr()));
    assert_eq!(vote(f.addr(), "blue", "bo").status, 200);
    assert_eq!(f.store.standing().candidates[0].votes, 2);
}

#[test]
fn path_segments_are_percent_decoded_strictly() {
    assert_eq!(
        split_path("/candidates/a%2Db/").ok(),
        Some(vec!["candidates".into(), "a-b".into()])
    );
    assert!(split_path("/a%2").is_err());
    assert!(split_path("/a%+f").is_err());
    assert!(split_path("/a%ff").is_err(), "not UTF-8");
    assert_eq!(split_path("//").ok(), Some(vec![]));
}
