//! Host and Origin checks: requests naming a foreign host or coming from
//! another site change nothing.

use super::*;

#[test]
fn a_request_naming_a_foreign_host_is_refused() {
    let f = start(&["blue"]);
    for host in ["evil.example", "evil.example:7447", "127.0.0.1.evil.example", "localhost.evil"] {
        let req = format!("GET /votes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let alone = raw(f.addr(), req.as_bytes());
        assert_eq!((alone.status, alone.code()), (403, "foreign_host"), "{host}: {alone:?}");
        let body = r#"{"candidate":"blue","voter":"x"}"#;
        let req = format!(
            "POST /votes HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(raw(f.addr(), req.as_bytes()).status, 403, "{host}");
    }
    assert_eq!(f.generation(), 1, "nothing changed");
    for host in ["127.0.0.1:7447", "localhost:7447", "LOCALHOST", "[::1]:7447", "10.1.2.3"] {
        let req = format!("GET /votes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw(f.addr(), req.as_bytes()).status, 200, "{host}");
    }
}

#[test]
fn a_configured_host_name_is_answered() {
    let f = start_with(&["blue"], test_limits(), |c| c.allow_hosts = vec!["Ballot.Local".into()]);
    for host in ["ballot.local", "ballot.local:7447"] {
        let req = format!("GET /votes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw(f.addr(), req.as_bytes()).status, 200, "{host}");
    }
    let req = "GET /votes HTTP/1.1\r\nHost: other.local\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(f.addr(), req.as_bytes()).status, 403);
}

#[test]
fn a_bodiless_change_without_json_is_refused_so_no_simple_request_can_reset() {
    let f = start(&["blue"]);
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200);
    // What fetch(url, {method: "POST", mode: "no-cors"}) sends: no body, no
    // JSON content type, an Origin of another site.
    for headers in [
        vec![],
        vec![("Content-Type", "text/plain")],
        vec![("Content-Type", "application/x-www-form-urlencoded")],
        vec![("Origin", "http://evil.example"), ("Content-Type", "text/plain")],
    ] {
        let r = call_with(f.addr(), "POST", "/votes/reset", &headers, "");
        assert!(matches!(r.status, 403 | 415), "{headers:?}: {r:?}");
        let r = call_with(f.addr(), "DELETE", "/candidates/blue", &headers, "");
        assert!(matches!(r.status, 403 | 415), "{headers:?}: {r:?}");
    }
    assert_eq!(f.store.standing().candidates.len(), 1, "blue is still there");
    assert_eq!(call(f.addr(), "GET", "/votes", None).body["votes"], json!({"blue": 1}));
}

#[test]
fn changes_from_another_origin_are_refused_and_the_own_page_is_not() {
    let f = start(&["blue"]);
    let json_ct = ("Content-Type", "application/json");
    let body = r#"{"candidate":"blue","voter":"x"}"#;
    for origin in ["http://evil.example", "null", "https://127.0.0.1", "http://127.0.0.1:1"] {
        let r = call_with(f.addr(), "POST", "/votes", &[json_ct, ("Origin", origin)], body);
        assert_eq!((r.status, r.code()), (403, "cross_origin"), "{origin}: {r:?}");
        let r = call_with(f.addr(), "POST", "/votes/reset", &[json_ct, ("Origin", origin)], "");
        assert_eq!(r.status, 403, "{origin}: {r:?}");
    }
    let r = call_with(
        f.addr(),
        "POST",
        "/votes",
        &[json_ct, ("Sec-Fetch-Site", "cross-site")],
        body,
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(f.generation(), 1, "nothing changed");
    // The ballot page's own requests: Origin is this server.
    let own = format!("http://{}", f.addr());
    let req = format!(
        "POST /votes HTTP/1.1\r\nHost: {}\r\nOrigin: {own}\r\nContent-Type: application/json\r\n\
         Sec-Fetch-Site: same-origin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        f.addr(),
        body.len()
    );
    assert_eq!(raw(f.addr(), req.as_bytes()).status, 200);
}
