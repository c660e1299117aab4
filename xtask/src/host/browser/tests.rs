//! Tests of the browser test's parsers.

use super::server::parse_server_line;
use super::cdp::parse_devtools_active_port;
use super::checks::png_size;

#[test]
fn the_server_address_is_read_from_its_line() {
    assert_eq!(
        parse_server_line("voting server: http://127.0.0.1:41123/"),
        Some("127.0.0.1:41123".parse().unwrap())
    );
    assert_eq!(
        parse_server_line("voting server: http://[::1]:80/"),
        Some("[::1]:80".parse().unwrap())
    );
    assert_eq!(parse_server_line("warning: no --votes-file"), None);
    assert_eq!(parse_server_line("voting server: http://nowhere/"), None);
}

#[test]
fn the_devtools_port_file_is_used_only_once_complete() {
    assert_eq!(
        parse_devtools_active_port("40321\n/devtools/browser/0a1b-2c\n"),
        Some((40321, "/devtools/browser/0a1b-2c".to_string()))
    );
    assert_eq!(parse_devtools_active_port("40321\n"), None, "half written");
    assert_eq!(parse_devtools_active_port(""), None);
    assert_eq!(parse_devtools_active_port("0\n/devtools/browser/x\n"), None);
    assert_eq!(parse_devtools_active_port("40321\n/json\n"), None);
}

#[test]
fn png_sizes_come_from_the_header() {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend(780u32.to_be_bytes());
    png.extend(1688u32.to_be_bytes());
    assert_eq!(png_size(&png), Some((780, 1688)));
    assert_eq!(png_size(b"GIF89a"), None);
    assert_eq!(png_size(&png[..18]), None);
}
