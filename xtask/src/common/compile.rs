//! Building the scheduler binary the way a user would: `cargo build` with
//! the BPF compiler chosen by `common/clang.rs`.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use xshell::{Shell, cmd};

use crate::common::clang;
use crate::host::deps;
use crate::{cache_dir, project_root};

/// The clang for the BPF build, after making sure the build packages are
/// installed.
pub fn bpf_clang(sh: &Shell) -> Result<String> {
    deps::ensure_build_deps(sh)?;
    clang::pick_clang().map_err(|why| anyhow!("{why}: {}", clang::CLANG_FIX))
}

/// Builds `scx_ballot` (release) and returns the path of the binary.
pub fn build_scheduler(sh: &Shell) -> Result<PathBuf> {
    let clang = bpf_clang(sh)?;
    println!("==> building scx_ballot (release; BPF compiled with {clang})");
    cmd!(sh, "cargo build --locked --release --package scx_ballot")
        .env("BPF_CLANG", &clang)
        .run()
        .context("building scx_ballot")?;
    Ok(project_root().join("target/release/scx_ballot"))
}

/// `cargo install NAME` into the cache (once); its binary.
pub fn install_scx(sh: &Shell, name: &str) -> Result<PathBuf> {
    let root = cache_dir().join("scx");
    let bin = root.join("bin").join(name);
    if bin.exists() {
        return Ok(bin);
    }
    println!(
        "==> installing {name} from crates.io into {} (once; several minutes)",
        root.display()
    );
    let clang = bpf_clang(sh)?;
    cmd!(sh, "cargo install --locked --root {root} {name}")
        .env("BPF_CLANG", clang)
        .run()
        .with_context(|| format!("cargo install {name}"))?;
    Ok(bin)
}
