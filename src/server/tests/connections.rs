//! Connections: keep-alive, pipelining and 100-continue, the connection cap,
//! many clients at once, and shutdown.

use super::*;

#[test]
fn one_connection_carries_several_requests_and_100_continue() {
    let f = start(&["blue"]);
    let mut stream = connect(f.addr());
    let body = r#"{"candidate":"blue","voter":"ana"}"#;
    let one = format!(
        "POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Two pipelined requests, then a third after the replies.
    stream.write_all(format!("{one}GET /votes HTTP/1.1\r\n\r\n").as_bytes()).expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let r = read_reply(&mut reader);
    assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    let r = read_reply(&mut reader);
    assert_eq!((r.status, r.body["votes"]["blue"].as_u64()), (200, Some(1)));
    // Another voter (one vote per voter: ana's again would not count).
    let body = r#"{"candidate":"blue","voter":"bo"}"#;
    let head = format!(
        "POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send head");
    assert_eq!(read_reply(&mut reader).status, 100);
    stream.write_all(body.as_bytes()).expect("send body");
    let r = read_reply(&mut reader);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert_eq!(r.body["votes"]["blue"], 2);
}

#[test]
fn connections_beyond_the_cap_get_503() {
    let limits = Limits { max_connections: 2, ..test_limits() };
    let f = start_with(&["blue"], limits, |_| {});
    let held: Vec<TcpStream> = (0..2).map(|_| connect(f.addr())).collect();
    let r = call(f.addr(), "GET", "/votes", None);
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{r:?}");
    drop(held);
    let t = Instant::now();
    loop {
        let r = call(f.addr(), "GET", "/votes", None);
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < CLIENT_TIMEOUT, "the slots never came back: {r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_closes_open_connections_and_stops_listening() {
    let mut f = start(&["blue"]);
    let addr = f.addr();
    let mut idle = connect(addr);
    idle.write_all(b"GET /vo").expect("send");
    let t = Instant::now();
    f.handle.shutdown();
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).is_err(), "still listening");
    f.handle.shutdown();
}

#[test]
fn the_last_request_a_connection_may_carry_says_close() {
    let limits = Limits { max_requests_per_connection: 3, ..test_limits() };
    let f = start_with(&["blue"], limits, |_| {});
    let mut conn = BufReader::new(connect(f.addr()));
    for n in 1..=3 {
        conn.get_mut()
            .write_all(b"GET /votes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("send");
        let r = read_reply(&mut conn);
        let want = if n == 3 { "close" } else { "keep-alive" };
        assert_eq!(r.header("connection"), Some(want), "response {n}: {r:?}");
    }
}

#[test]
fn more_keep_alive_clients_than_threads_are_all_answered() {
    // Well past the 64 connections a thread each allowed.
    const CLIENTS: usize = 600;
    // Idle clients are reclaimed after the request timeout: a slow test
    // build must not see its clients go while it opens the others.
    let limits = Limits { request_timeout: Duration::from_secs(60), ..test_limits() };
    let f = start_with(&["blue"], limits, |_| {});
    let mut clients: Vec<BufReader<TcpStream>> =
        (0..CLIENTS).map(|_| BufReader::new(connect(f.addr()))).collect();
    let streams: Vec<BufReader<TcpStream>> = (0..CLIENTS / 2).map(|_| subscribe(f.addr())).collect();
    for round in 0..2 {
        for c in &mut clients {
            c.get_mut()
                .write_all(b"GET /votes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .expect("send");
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let r = read_reply(c);
            assert_eq!(r.status, 200, "client {i}, round {round}: {r:?}");
            assert_eq!(r.header("connection"), Some("keep-alive"));
        }
    }
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200);
    for mut s in streams {
        next_event(&mut s, |name, data| name == "tally" && data.contains("\"blue\":1"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_and_their_changes_share_syncs() {
    let f = start(&["blue", "green"]);
    let flushes = f.store.flushes();
    let mut conn = BufReader::new(connect(f.addr()));
    let mut all = String::new();
    for i in 0..40 {
        let body = json!({"candidate": if i % 2 == 0 { "blue" } else { "green" }, "voter": format!("v{i}")})
            .to_string();
        all.push_str(&format!(
            "POST /votes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        if i == 20 {
            // A read between changes answers in its place.
            all.push_str("GET /votes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        }
    }
    conn.get_mut().write_all(all.as_bytes()).expect("send");
    let mut generations = Vec::new();
    for i in 0..41 {
        let r = read_reply(&mut conn);
        assert_eq!(r.status, 200, "answer {i}: {r:?}");
        generations.push(r.body["generation"].as_u64().expect("a generation"));
    }
    // Each change's answer shows the standing with it; the read between
    // them, the standing as it was when it was read (at least the change
    // before it).
    assert!(generations.windows(2).all(|w| w[0] <= w[1]), "{generations:?}");
    assert_eq!(call(f.addr(), "GET", "/votes", None).body["votes"], json!({"blue": 20, "green": 20}));
    let syncs = f.store.flushes() - flushes;
    assert!(syncs < 40, "40 pipelined changes took {syncs} syncs");
}
