//! Admin routes: creating, changing and deleting candidates, and the token
//! they need.

use super::*;

#[test]
fn admin_routes_create_change_and_delete_candidates() {
    let f = start(&["blue"]);
    let r = call(
        f.addr(),
        "POST",
        "/candidates",
        Some(json!({"name": "red", "members": [{"kind": "comm", "comm": "stress-ng"}]})),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["votes"], json!({"blue": 0, "red": 0}));
    let r = call(f.addr(), "POST", "/candidates", Some(json!({"name": "red"})));
    assert_eq!((r.status, r.code()), (409, "duplicate_candidate"), "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates",
        Some(json!({"name": "pink", "members": [{"kind": "comm", "comm": "stress-ng"}]})),
    );
    assert_eq!((r.status, r.code()), (409, "duplicate_member"), "{r:?}");

    let me = std::process::id() as i32;
    let r =
        call(f.addr(), "POST", "/candidates/red/members", Some(json!({"kind": "pid", "pid": me})));
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates/red/members",
        Some(json!({"kind": "cgroup", "path": "/demo/red"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates/red/members",
        Some(json!({"kind": "pid", "pid": i32::MAX})),
    );
    assert_eq!((r.status, r.code()), (422, "no_such_process"), "{r:?}");
    let r =
        call(f.addr(), "POST", "/candidates/nope/members", Some(json!({"kind": "pid", "pid": me})));
    assert_eq!((r.status, r.code()), (404, "unknown_candidate"), "{r:?}");

    let r = call(f.addr(), "GET", "/candidates", None);
    assert_eq!(r.status, 200);
    let start_time = crate::ballot::proc_start_time(me).expect("this process exists");
    assert_eq!(
        r.body,
        json!([
            {"name": "blue", "votes": 0, "members": [], "live": []},
            {"name": "red", "votes": 0, "members": [
                {"kind": "comm", "comm": "stress-ng"},
                {"kind": "pid", "pid": me, "start_time": start_time,
                 "boot_id": crate::election::procfs::current_boot_id()},
                {"kind": "cgroup", "path": "/demo/red"},
            ], "live": []},
        ])
    );

    let r = call(
        f.addr(),
        "DELETE",
        "/candidates/red/members",
        Some(json!({"kind": "pid", "pid": me})),
    );
    assert_eq!(r.status, 200, "a bare pid removes the member: {r:?}");
    let r = call(
        f.addr(),
        "DELETE",
        "/candidates/red/members",
        Some(json!({"kind": "pid", "pid": me})),
    );
    assert_eq!((r.status, r.code()), (404, "absent_member"), "{r:?}");
    let members = &call(f.addr(), "GET", "/candidates", None).body[1]["members"];
    assert_eq!(members.as_array().map(Vec::len), Some(2), "{members}");

    vote(f.addr(), "red", "ana");
    vote(f.addr(), "blue", "bo");
    let r = call(f.addr(), "POST", "/votes/reset", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["votes"], json!({"blue": 0, "red": 0}));
    assert_eq!(r.body["leader"], Value::Null);

    let r = call(f.addr(), "DELETE", "/candidates/red", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["votes"], json!({"blue": 0}));
    let r = call(f.addr(), "DELETE", "/candidates/red", None);
    assert_eq!((r.status, r.code()), (404, "unknown_candidate"), "{r:?}");
    let r = call(f.addr(), "DELETE", "/candidates/bl%75e", None);
    assert_eq!(r.status, 200, "percent-encoded names are decoded: {r:?}");
}

#[test]
fn admin_routes_need_the_token_when_one_is_set() {
    let f = start_with(&["blue"], test_limits(), |c| c.admin_token = Some("s3cret".into()));
    assert_eq!(f.handle.admin_token.as_deref(), Some("s3cret"));
    let reset = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        call_with(f.addr(), "POST", "/votes/reset", &all, "")
    };
    let r = reset(&[]);
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    for wrong in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "Bearer "] {
        let r = reset(&[("Authorization", wrong)]);
        assert_eq!(r.status, 401, "{wrong}: {r:?}");
    }
    let r = call_with(f.addr(), "DELETE", "/candidates/blue", &[], "");
    assert_eq!(r.status, 401, "{r:?}");
    let r = call_with(
        f.addr(),
        "POST",
        "/candidates",
        &[("Content-Type", "application/json")],
        r#"{"name":"x"}"#,
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(f.generation(), 1, "nothing changed");
    assert_eq!(reset(&[("Authorization", "Bearer s3cret")]).status, 200);
    assert_eq!(reset(&[("authorization", "bearer s3cret")]).status, 200);
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200, "voting needs no token");
    assert_eq!(call(f.addr(), "GET", "/candidates", None).status, 200);
}

#[test]
fn a_listener_beyond_loopback_always_has_a_token() {
    let loopback: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let v6: SocketAddr = "[::1]:1".parse().expect("addr");
    let anywhere: SocketAddr = "0.0.0.0:1".parse().expect("addr");
    assert_eq!(admin_token_for(loopback, None).expect("token"), None);
    assert_eq!(admin_token_for(v6, None).expect("token"), None);
    assert_eq!(admin_token_for(anywhere, Some("t".into())).expect("token").as_deref(), Some("t"));
    let a = admin_token_for(anywhere, None).expect("token").expect("generated");
    let b = admin_token_for(anywhere, None).expect("token").expect("generated");
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, b);
    let store = Arc::new(Store::open(None, vec![], Board::new()).expect("store").0);
    for bad in ["", "two words"] {
        let mut cfg = ServerConfig::new(loopback);
        cfg.admin_token = Some(bad.into());
        assert!(spawn(cfg, Arc::clone(&store), Board::new()).is_err(), "{bad:?}");
    }
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
}
