//! Finding a clang that can build the BPF program (scx's headers need clang
//! 18 or newer). Shared with the root crate's `build.rs`, which includes this
//! file, so that the xtask and a plain `cargo build` pick the same compiler.

use std::process::Command;

/// The oldest clang that can build the scx headers (`-mcpu=v4`).
pub const MIN_CLANG_MAJOR: u32 = 18;

/// Tried in this order when `BPF_CLANG` is not set.
pub const CLANG_CANDIDATES: &[&str] =
    &["clang", "clang-22", "clang-21", "clang-20", "clang-19", "clang-18"];

/// How to get a usable clang, for error messages.
pub const CLANG_FIX: &str = "install clang >= 18 (Debian 12: `apt-get install clang-19 llvm-19 \
     libelf-dev zlib1g-dev pkg-config`), or point BPF_CLANG at one; `cargo xtask test` and \
     `cargo xtask run` install these for you";

/// The clang to use: `$BPF_CLANG` if set (and new enough), else the first
/// candidate on `PATH` that is new enough.
pub fn pick_clang() -> Result<String, String> {
    if let Ok(clang) = std::env::var("BPF_CLANG") {
        return match clang_major(&clang) {
            Some(v) if v >= MIN_CLANG_MAJOR => Ok(clang),
            Some(v) => Err(format!(
                "BPF_CLANG={clang} is clang {v}; the BPF build needs clang >= {MIN_CLANG_MAJOR}"
            )),
            None => Err(format!("BPF_CLANG={clang} cannot be run")),
        };
    }
    let mut seen = Vec::new();
    for name in CLANG_CANDIDATES {
        match clang_major(name) {
            Some(v) if v >= MIN_CLANG_MAJOR => return Ok(name.to_string()),
            Some(v) => seen.push(format!("{name} is version {v}")),
            None => {}
        }
    }
    if seen.is_empty() {
        Err("no clang found on PATH".into())
    } else {
        Err(format!("no clang >= {MIN_CLANG_MAJOR} found ({})", seen.join(", ")))
    }
}

/// The major version that `clang --version` reports, if the command runs.
pub fn clang_major(clang: &str) -> Option<u32> {
    let out = Command::new(clang).arg("--version").output().ok()?;
    parse_clang_major(&String::from_utf8_lossy(&out.stdout))
}

/// The major version in a `clang --version` text.
pub fn parse_clang_major(text: &str) -> Option<u32> {
    let rest = text.split("clang version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_debian_and_upstream_banners() {
        let debian = "Debian clang version 19.1.7 (3~deb12u1)\nTarget: x86_64-pc-linux-gnu\n";
        assert_eq!(parse_clang_major(debian), Some(19));
        let arch = "clang version 21.1.6\nTarget: x86_64-pc-linux-gnu\nThread model: posix\n";
        assert_eq!(parse_clang_major(arch), Some(21));
        assert_eq!(parse_clang_major("gcc (Debian 12.2.0-14) 12.2.0\n"), None);
    }
}
