//! Host tools: checks what the build, the VM and the browser test need and
//! installs what is missing, saying so one line per thing.
//!
//! Debian packages are checked with `dpkg-query` and installed with
//! `apt-get` (one `apt-get update` per process, and only when something is
//! missing). Without root, nothing is installed: the error names the exact
//! commands to run. Two tools come from their own registries into
//! [`crate::cache_dir`]: virtiofsd (`cargo install`, into `tools/`) and
//! virtme-ng (`pip`, into a venv at `venv/`), so the host's Python and
//! `~/.cargo` stay untouched.
//!
//! This module also reads the host's apt sources: the project never names a
//! mirror itself, it reuses the one the machine already trusts.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::cache_dir;

mod apt;
mod sources;

use apt::ensure_apt;

pub use sources::system_mirror;

/// virtme-ng release the VM code was written against (`vng` flags and
/// console plumbing change between releases).
pub const VIRTME_NG_VERSION: &str = "1.42";

/// virtiofsd release built from crates.io: vng shares the host's root
/// filesystem with it (Debian's kernels have no 9P).
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

/// The keyring Debian's archives are signed with (bookworm's current copy
/// verifies trixie-backports too); the kernel download and the backports
/// source both rely on it.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// What the VM runner needs on top of the apt packages: where `vng` is and
/// which folders go first on its `PATH`.
#[derive(Debug, Clone)]
pub struct VmTools {
    /// The `vng` launcher inside the xtask's venv.
    pub vng: PathBuf,
    /// Folders to put first on `PATH` when running `vng` (virtiofsd's `bin/`,
    /// the venv's `bin/`).
    pub path_prepend: Vec<PathBuf>,
}

impl VmTools {
    /// `PATH` for running `vng`: [`Self::path_prepend`], then the current
    /// `PATH`, then the sbin folders (vng runs `depmod`, which non-root users
    /// often lack on their `PATH`).
    pub fn path_env(&self) -> OsString {
        let current = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = self.path_prepend.clone();
        dirs.extend(std::env::split_paths(&current));
        for sbin in ["/usr/sbin", "/sbin"] {
            if !dirs.iter().any(|d| d == Path::new(sbin)) {
                dirs.push(PathBuf::from(sbin));
            }
        }
        std::env::join_paths(dirs).expect("PATH entries come from PATH or from our own folders")
    }
}

/// Install what building and VM-testing scx_ballot need on this host.
#[derive(Debug, clap::Args)]
pub struct DepsCmd {}

impl DepsCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        ensure_build_deps(sh)?;
        let tools = ensure_vm_tools(sh)?;
        println!(
            "build and VM tools are installed; vng: {}",
            tools.vng.display()
        );
        Ok(())
    }
}

/// One apt package the xtask needs, and why (printed when it is installed).
struct Pkg {
    name: &'static str,
    why: &'static str,
}

const fn pkg(name: &'static str, why: &'static str) -> Pkg {
    Pkg { name, why }
}

/// Makes sure the packages needed to compile the BPF program are installed:
/// clang-19 and llvm-19 (bookworm's default clang 14 cannot build sched_ext
/// programs), libelf and zlib headers for libbpf, and pkg-config.
pub fn ensure_build_deps(sh: &Shell) -> Result<()> {
    ensure_apt(
        sh,
        &[
            pkg(
                "clang-19",
                "compiles the BPF program (clang >= 18 for -mcpu=v4)",
            ),
            pkg("llvm-19", "llvm-strip and friends for the BPF object"),
            pkg("libelf-dev", "libbpf reads ELF objects"),
            pkg("zlib1g-dev", "libbpf links zlib"),
            pkg("pkg-config", "finds libelf and zlib for libbpf-sys"),
        ],
        &[],
    )
}

/// Makes sure everything needed to boot a test VM is there, installing what
/// is missing: apt packages (QEMU from bookworm-backports on bookworm, whose
/// own QEMU is too old), virtiofsd and virtme-ng.
pub fn ensure_vm_tools(sh: &Shell) -> Result<VmTools> {
    let tools_root = cache_dir().join("tools");
    let virtiofsd = tools_root.join("bin").join("virtiofsd");
    let venv = cache_dir().join("venv");
    let vng = venv.join("bin").join("vng");

    let need_virtiofsd = !virtiofsd.is_file();
    let need_vng = !vng_works(sh, &vng);

    let mut pkgs = vec![
        pkg("kmod", "vng runs depmod on the kernel's modules"),
        pkg("udev", "the guest init starts udevd"),
        pkg("busybox-static", "vng builds its initramfs with busybox"),
        pkg("stress-ng", "guest workload"),
        pkg("rt-tests", "guest workload (hackbench)"),
    ];
    if need_virtiofsd {
        pkgs.push(pkg("libseccomp-dev", "building virtiofsd"));
        pkgs.push(pkg("libcap-ng-dev", "building virtiofsd"));
        pkgs.push(pkg("pkg-config", "building virtiofsd"));
    }
    if need_vng {
        pkgs.push(pkg("python3-venv", "a private venv for virtme-ng"));
    }
    let qemu = [pkg("qemu-system-x86", "runs the VM")];
    ensure_apt(sh, &pkgs, &qemu)?;

    if need_virtiofsd {
        println!(
            "installing virtiofsd {VIRTIOFSD_VERSION} into {} (cargo install, about 2 minutes)",
            tools_root.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        cmd!(
            sh,
            "{cargo} install --locked --root {tools_root} --version {VIRTIOFSD_VERSION} virtiofsd"
        )
        .run()
        .context("installing virtiofsd with cargo")?;
    }

    if need_vng {
        println!(
            "installing virtme-ng {VIRTME_NG_VERSION} into the venv {}",
            venv.display()
        );
        if !venv.join("bin").join("python3").exists() {
            cmd!(sh, "python3 -m venv {venv}")
                .run()
                .context("creating the virtme-ng venv")?;
        }
        let pip = venv.join("bin").join("pip");
        let spec = format!("virtme-ng=={VIRTME_NG_VERSION}");
        cmd!(sh, "{pip} install --disable-pip-version-check {spec}")
            .run()
            .context("installing virtme-ng with pip")?;
        if !vng_works(sh, &vng) {
            bail!(
                "virtme-ng was installed but `{} --version` still fails",
                vng.display()
            );
        }
    }

    Ok(VmTools {
        vng,
        path_prepend: vec![tools_root.join("bin"), venv.join("bin")],
    })
}

/// Makes sure the tools to fetch and unpack Debian's kernel are there:
/// apt itself, dpkg-deb and the archive keyring.
pub fn ensure_kernel_fetch_deps(sh: &Shell) -> Result<()> {
    ensure_apt(
        sh,
        &[pkg(
            "debian-archive-keyring",
            "verifies the kernel packages",
        )],
        &[],
    )
}

/// Makes sure the browser test's browser is installed: Debian's Chromium
/// (bookworm main), run headless and driven over the DevTools protocol, and
/// a font for the text in its screenshots.
pub fn ensure_browser_deps(sh: &Shell) -> Result<()> {
    ensure_apt(
        sh,
        &[
            pkg(
                "chromium",
                "the real browser the ballot page is tested in (headless, DevTools protocol)",
            ),
            pkg("fonts-dejavu-core", "a font for the page's text in the screenshots"),
        ],
        &[],
    )
}

/// True when `vng --version` runs and reports [`VIRTME_NG_VERSION`].
fn vng_works(sh: &Shell, vng: &Path) -> bool {
    if !vng.exists() {
        return false;
    }
    cmd!(sh, "{vng} --version")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|out| out.split_whitespace().any(|w| w == VIRTME_NG_VERSION))
        .unwrap_or(false)
}

/// Whether this process runs as root.
/// What `cargo xtask bench` runs on top of the VM tools.
pub fn ensure_bench_deps(sh: &Shell) -> Result<()> {
    ensure_apt(sh, &[pkg("rt-tests", "hackbench, the messaging benchmark")], &[])
}

/// Whether packages can be checked and installed with dpkg and apt.
fn is_debian() -> bool {
    std::path::Path::new("/usr/bin/dpkg-query").exists() && std::path::Path::new("/usr/bin/apt-get").exists()
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `VERSION_CODENAME` from /etc/os-release ("bookworm", "trixie"), if any.
pub fn os_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests;
