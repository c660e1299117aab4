//! Compiles `bpf/main.bpf.c` into a libbpf-rs skeleton (`bpf_skel.rs`) and
//! turns `bpf/intf.h` into Rust types (`bpf_intf.rs`), both in `OUT_DIR`.
//!
//! The BPF compiler is `$BPF_CLANG` when set; otherwise the first clang of
//! version 18 or newer found on `PATH` (see `xtask/src/common/clang.rs`).

#[path = "xtask/src/common/clang.rs"]
mod clang;

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-env-changed=PATH");
    rerun_for_dir(Path::new("bpf"));

    let clang = match clang::pick_clang() {
        Ok(clang) => clang,
        Err(why) => fail(&why),
    };
    // scx_cargo reads BPF_CLANG; make our pick visible to it.
    // SAFETY: the build script has no other threads that read the environment.
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
    let fix = clang::CLANG_FIX;
    eprintln!("error: {why}");
    eprintln!("fix: {fix}");
    println!("cargo:warning={why}; fix: {fix}");
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
