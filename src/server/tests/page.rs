//! The ballot page: served at the root, self-contained, and calling only
//! documented routes.

use super::*;

#[test]
fn the_ballot_page_is_served_at_the_root() {
    let f = start(&["blue"]);
    for path in ["/", "/index.html", "/?voter=ana"] {
        let r = call(f.addr(), "GET", path, None);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"), "{path}");
        assert_eq!(r.text, BALLOT_PAGE, "{path}");
        let csp = r.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    }
    let r = call(f.addr(), "POST", "/", None);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")), "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "errors stay JSON");
}

#[test]
fn the_ballot_page_loads_nothing_from_elsewhere() {
    let page = BALLOT_PAGE.to_ascii_lowercase();
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains(r#"<meta name="viewport" content="width=device-width"#));
    let forbidden = ["http://", "https://", "//cdn", "<link rel=\"stylesheet", "@import", "url("];
    for forbidden in forbidden.into_iter().chain(["<img", "<iframe", "<object", "<embed"]) {
        assert!(!page.contains(forbidden), "the page must be self-contained, found {forbidden:?}");
    }
    // Every `src=` or `href=` is inline data, never a URL.
    for attr in ["src=", "href="] {
        for (i, _) in page.match_indices(attr) {
            let value = &page[i + attr.len()..];
            let shown = &value[..40.min(value.len())];
            assert!(value.starts_with("\"data:"), "{attr} at {i} loads something: {shown}");
        }
    }
    // Exactly one script and one style, both inline.
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains("<script>"), "the script is inline");
    assert_eq!(page.matches("<style").count(), 1);
}

#[test]
fn the_ballot_page_calls_only_documented_api_routes() {
    let script = BALLOT_PAGE.split("<script>").nth(1).expect("a script");
    let mut calls: Vec<(&str, &str)> = script
        .match_indices("api(\"")
        .map(|(i, m)| {
            let rest = &script[i + m.len()..];
            let method = &rest[..rest.find('"').expect("closing quote")];
            let path = rest.split('"').nth(2).expect("a path argument");
            (method, path)
        })
        .collect();
    calls.extend(script.match_indices("new EventSource(\"").map(|(i, m)| {
        let rest = &script[i + m.len()..];
        ("GET", &rest[..rest.find('"').expect("closing quote")])
    }));
    let mut seen: Vec<String> = calls.iter().map(|(m, p)| format!("{m} {p}")).collect();
    seen.sort();
    assert_eq!(
        seen,
        ["GET /candidates", "GET /events", "GET /schedule", "GET /votes", "POST /votes"]
    );
    for (method, path) in calls {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let route =
            resolve(method, &segments).unwrap_or_else(|| panic!("{method} {path} is no route"));
        assert!(!route.is_admin() && route != Route::Page, "{method} {path}");
    }
    assert_eq!(script.matches("fetch(").count(), 1, "every request goes through api()");
    assert_eq!(script.matches("EventSource(").count(), 1, "one place opens the stream");
}

#[test]
fn the_ballot_page_has_the_hooks_the_browser_test_uses() {
    for hook in [
        "dataset.candidate",
        "dataset.tally",
        "dataset.share",
        "dataset.processes",
        "dataset.pid",
        "dataset.feed",
        r#"id="conn""#,
        r#"id="message""#,
        r#"id="voter-name""#,
        "localStorage",
        "Retry-After",
    ] {
        assert!(BALLOT_PAGE.contains(hook), "the page lost {hook}");
    }
}
