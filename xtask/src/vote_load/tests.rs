//! Tests of the load generator: answer parsing, percentiles, and runs against a small local server.

use std::net::TcpListener;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;
use super::cmd::View;
use super::parse::{find_head_end, Head, parse_head, ChunkedDecoder, SseItem, SSE_LINE_KEPT, SseSplitter};

#[test]
fn percentile_picks_the_rank() {
    assert_eq!(percentile(&[], 0.5), None);
    assert_eq!(percentile(&[7], 0.5), Some(7));
    assert_eq!(percentile(&[7], 0.99), Some(7));
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&v, 0.0), Some(1));
    assert_eq!(percentile(&v, 0.5), Some(51));
    assert_eq!(percentile(&v, 0.99), Some(100));
    assert_eq!(percentile(&v, 1.0), Some(100));
    let v: Vec<u64> = (1..=1000).collect();
    assert_eq!(percentile(&v, 0.99), Some(991));
}

#[test]
fn fmt_ms_scales() {
    assert_eq!(fmt_ms(None), "-");
    assert_eq!(fmt_ms(Some(0.84)), "0.8 ms");
    assert_eq!(fmt_ms(Some(45.4)), "45 ms");
    assert_eq!(fmt_ms(Some(12_345.0)), "12.3 s");
}

#[test]
fn head_end_and_fields() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n{\"a\":1}";
    let end = find_head_end(raw).unwrap();
    assert_eq!(&raw[end..], b"{\"a\":1}");
    let head = parse_head(&raw[..end]).unwrap();
    assert_eq!(
        head,
        Head {
            status: 200,
            reason: "OK".into(),
            content_length: Some(12),
            chunked: false,
            close: false,
            content_type: "application/json".into(),
        }
    );
    assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
    // LF-only lines, a stream head: no length, chunked, closing.
    let raw = b"HTTP/1.1 503 Service Unavailable\nconnection: close\ntransfer-encoding: chunked\ncontent-type: text/event-stream\n\nrest";
    let end = find_head_end(raw).unwrap();
    assert_eq!(&raw[end..], b"rest");
    let head = parse_head(&raw[..end]).unwrap();
    assert_eq!(head.status, 503);
    assert_eq!(head.reason, "Service Unavailable");
    assert!(head.chunked && head.close);
    assert_eq!(head.content_length, None);
    assert_eq!(head.content_type, "text/event-stream");
    // HTTP/1.0 closes unless it says keep-alive.
    assert!(parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().close);
    assert!(
        !parse_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .close
    );
    assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
}

/// Feeds `data` to `feed` in every split into two pieces and byte by
/// byte; all must give the same as feeding it whole.
fn splits(data: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all = vec![vec![data]];
    for at in 1..data.len() {
        all.push(vec![&data[..at], &data[at..]]);
    }
    all.push(data.chunks(1).collect());
    all
}

#[test]
fn chunked_bodies_decode_in_any_pieces() {
    let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nextra";
    for pieces in splits(body) {
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut done = false;
        for piece in pieces {
            // Once complete, what follows is not the body's.
            done = dec.feed(piece, &mut |b| out.extend_from_slice(b)).unwrap();
        }
        assert!(done);
        assert_eq!(out, b"hello world");
    }
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    assert!(
        !dec.feed(b"3\nabc\n", &mut |b| out.extend_from_slice(b))
            .unwrap()
    );
    assert!(
        dec.feed(b"0\n\n", &mut |b| out.extend_from_slice(b))
            .unwrap()
    );
    assert_eq!(out, b"abc");
    assert!(
        ChunkedDecoder::default()
            .feed(b"zz\r\n", &mut |_| {})
            .is_err()
    );
    assert!(
        ChunkedDecoder::default()
            .feed(b"1\r\nab\r\n", &mut |_| {})
            .is_err()
    );
}

#[test]
fn sse_splits_events_in_any_pieces() {
    let stream = b"event: tally\ndata: {\"blue\":3}\n\n: keep-alive\n\nevent: candidates\r\ndata: [1,\r\ndata: 2]\r\n\r\ndata: plain\r\rretry: 100\n\nevent: lonely\n\nevent: half\ndata: x";
    for pieces in splits(stream) {
        let mut sse = SseSplitter::default();
        let mut items = Vec::new();
        for piece in pieces {
            sse.feed(piece, &mut |item| items.push(item));
        }
        assert_eq!(
            items,
            [
                SseItem::Event("tally".into()),
                SseItem::Other,
                SseItem::Event("candidates".into()),
                SseItem::Event("message".into()),
                SseItem::Other,
                SseItem::Other,
            ],
        );
    }
}

#[test]
fn sse_long_lines_are_counted_not_kept() {
    let mut sse = SseSplitter::default();
    let mut items = Vec::new();
    let long = format!("event: tally\ndata: {}\n\n", "x".repeat(100_000));
    sse.feed(long.as_bytes(), &mut |item| items.push(item));
    assert_eq!(items, [SseItem::Event("tally".into())]);
    assert!(sse.line.capacity() <= 4 * SSE_LINE_KEPT);
}

/// A loopback server that gives every connection to `serve` on its own
/// thread, for `secs`; its port.
fn tiny_server(secs: u64, serve: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || serve(s));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    port
}

/// Reads one request head.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8];
    while find_head_end(&head).is_none() {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn viewers_only(port: u16, secs: u64) -> Load {
    Load {
        addr: format!("127.0.0.1:{port}"),
        candidate: "blue".into(),
        connections: 0,
        secs,
        pipeline: 1,
    }
}

#[test]
fn a_server_without_events_stops_the_run_at_once() {
    let port = tiny_server(5, |mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        while read_head(&mut s).is_some() {
            let body = r#"{"error":"no such route","code":"not_found"}"#;
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let e = viewers_only(port, 4)
        .run_with_viewers(&Viewers::new(20, View::Stream))
        .unwrap_err();
    assert!(e.to_string().contains("no /events stream"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn streams_and_polls_are_held() {
    let port = tiny_server(5, |mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        while let Some(head) = read_head(&mut s) {
            if head.starts_with("GET /events ") {
                // Chunked, one event every 200 ms, a comment between.
                let mut out = s;
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
                for _ in 0..20 {
                    let ev = "event: tally\ndata: {}\n\n: ping\n\n";
                    let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
                    if out.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                return;
            }
            let body = r#"{"blue":1}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    });
    let r = viewers_only(port, 2)
        .run_with_viewers(&Viewers::new(10, View::Stream))
        .unwrap();
    assert!(r.voters.is_none());
    let v = r.viewers.unwrap();
    assert_eq!((v.held, v.refused, v.late), (10, 0, 0), "{}", v.line());
    assert!(v.events >= 50 && v.comments >= 50, "{}", v.line());
    assert_eq!(v.event_names.keys().collect::<Vec<_>>(), ["tally"]);
    assert!(v.worst_gap_ms.unwrap() < 1000.0, "{}", v.line());

    let v = viewers_only(port, 2)
        .run_with_viewers(&Viewers::new(10, View::Poll))
        .unwrap()
        .viewers
        .unwrap();
    assert_eq!((v.held, v.refused, v.late), (10, 0, 0), "{}", v.line());
    // Each polls at its start and a second later.
    assert_eq!(v.answers, 20, "{}", v.line());
}

#[test]
fn nothing_listening_is_an_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = viewers_only(port, 2)
        .run_with_viewers(&Viewers::new(5, View::Poll))
        .unwrap_err();
    assert!(e.to_string().contains("nothing listens"), "{e}");
}
