//! Compiles `bpf/main.bpf.c` into a libbpf-rs skeleton (`bpf_skel.rs`) and
//! turns `bpf/intf.h` into Rust types (`bpf_intf.rs`), both in `OUT_DIR`.
//!
//! The BPF compiler is `$BPF_CLANG` when set; otherwise the first clang of
//! version 18 or newer found on `PATH` (`clang`, then `clang-19`, `clang-18`,
//! ...). scx's headers need clang >= 18.

use std::path::Path;
use std::process::Command;

/// The oldest clang that can build the scx headers (`-mcpu=v4`).
const MIN_CLANG_MAJOR: u32 = 18;
const CLANG_CANDIDATES: &[&str] = &[
    "clang", "clang-22", "clang-21", "clang-20", "clang-19", "clang-18",
];
const FIX: &str = "install clang >= 18 (Debian 12: `apt-get install clang-19 llvm-19 \
                   libelf-dev zlib1g-dev pkg-config`), or point BPF_CLANG at one; \
                   `cargo xtask vm-test` installs these for you";

fn main() {
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-env-changed=PATH");
    rerun_for_dir(Path::new("bpf"));

    let clang = match pick_clang() {
        Ok(clang) => clang,
        Err(why) => fail(&why),
    };
    // scx_cargo reads BPF_CLANG; make our pick visible to it.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("BPF_CLANG", &clang) };

    let result = scx_cargo::BpfBuilder::new().and_then(|mut builder| {
        builder
            .enable_intf("bpf/intf.h", "bpf_intf.rs")
            .enable_skel("bpf/main.bpf.c", "bpf")
            .build()
    });
    if let Err(e) = result {
        fail(&format!("building the BPF program with {clang} failed: {e:#}"));
    }
}

fn fail(why: &str) -> ! {
    eprintln!("error: {why}");
    eprintln!("fix: {FIX}");
    println!("cargo:warning={why}; fix: {FIX}");
    std::process::exit(1);
}

/// Every file below `bpf/` is an input of the skeleton, headers included.
fn rerun_for_dir(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rerun_for_dir(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn pick_clang() -> Result<String, String> {
    if let Ok(clang) = std::env::var("BPF_CLANG") {
        return match clang_major(&clang) {
            Some(v) if v >= MIN_CLANG_MAJOR => Ok(clang),
            Some(v) => Err(format!("BPF_CLANG={clang} is clang {v}; the BPF build needs clang >= {MIN_CLANG_MAJOR}")),
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

/// The major version `clang --version` reports, if the command runs.
fn clang_major(clang: &str) -> Option<u32> {
    let out = Command::new(clang).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("clang version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}
