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

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::cache_dir;

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

/// Whether `apt-get update` already ran in this process.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Installs the missing ones among `pkgs` (from the default suites) and
/// `backports` (from `<codename>-backports` on bookworm, where the default
/// suites carry versions too old for us; elsewhere from the default suites).
fn ensure_apt(sh: &Shell, pkgs: &[Pkg], backports: &[Pkg]) -> Result<()> {
    if !is_debian() {
        // Arch, CachyOS, ...: the packages have other names there (README,
        // "On CachyOS or Arch"); a missing tool fails later by name.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            println!("note: not a Debian system: not installing packages; the README's \"On CachyOS or Arch\" lists what to install");
        });
        return Ok(());
    }
    let names: Vec<&str> = pkgs.iter().chain(backports).map(|p| p.name).collect();
    let installed = installed_packages(sh, &names)?;
    let missing: Vec<&Pkg> = pkgs
        .iter()
        .filter(|p| !installed.contains(p.name))
        .collect();
    let missing_bp: Vec<&Pkg> = backports
        .iter()
        .filter(|p| !installed.contains(p.name))
        .collect();
    if missing.is_empty() && missing_bp.is_empty() {
        return Ok(());
    }

    let codename = os_codename();
    let backports_suite = (codename.as_deref() == Some("bookworm") && !missing_bp.is_empty())
        .then(|| "bookworm-backports".to_string());
    let add_source = match &backports_suite {
        Some(suite) if !system_has_suite(suite)? => {
            Some(backports_source(&system_mirror()?, suite))
        }
        _ => None,
    };

    let plain: Vec<&str> = missing.iter().map(|p| p.name).collect();
    let bp: Vec<&str> = missing_bp.iter().map(|p| p.name).collect();
    if !is_root() {
        let mut how = String::from("as root, run:\n");
        if let (Some(text), Some(suite)) = (&add_source, &backports_suite) {
            how += &format!("  cat > /etc/apt/sources.list.d/{suite}.sources <<'EOF'\n{text}EOF\n");
        }
        how += "  apt-get update\n";
        if !plain.is_empty() {
            how += &format!(
                "  apt-get install -y --no-install-recommends {}\n",
                plain.join(" ")
            );
        }
        if !bp.is_empty() {
            let target = backports_suite
                .as_ref()
                .map(|s| format!("-t {s} "))
                .unwrap_or_default();
            how += &format!(
                "  apt-get install -y --no-install-recommends {target}{}\n",
                bp.join(" ")
            );
        }
        bail!(
            "missing Debian packages: {}\n{how}",
            plain
                .iter()
                .chain(&bp)
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    if let (Some(text), Some(suite)) = (&add_source, &backports_suite) {
        let path = format!("/etc/apt/sources.list.d/{suite}.sources");
        println!("adding apt source {path} ({suite} main, the system's own mirror)");
        std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
        APT_UPDATED.store(false, Ordering::SeqCst);
    }
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        println!("updating apt package lists");
        cmd!(sh, "apt-get update -q")
            .run()
            .context("running apt-get update")?;
    }
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    if !missing.is_empty() {
        for p in &missing {
            println!("installing {} ({})", p.name, p.why);
        }
        cmd!(
            sh,
            "apt-get install -y -q --no-install-recommends {plain...}"
        )
        .run()
        .context("installing Debian packages")?;
    }
    if !missing_bp.is_empty() {
        for p in &missing_bp {
            let from = backports_suite.as_deref().unwrap_or("the default suites");
            println!("installing {} from {from} ({})", p.name, p.why);
        }
        let target: Vec<String> = backports_suite
            .iter()
            .flat_map(|s| ["-t".to_string(), s.clone()])
            .collect();
        cmd!(
            sh,
            "apt-get install -y -q --no-install-recommends {target...} {bp...}"
        )
        .run()
        .context("installing Debian packages from backports")?;
    }
    Ok(())
}

/// The subset of `names` that dpkg reports as "install ok installed".
fn installed_packages(sh: &Shell, names: &[&str]) -> Result<HashSet<String>> {
    let format = "-f=${Package}\t${Status}\n";
    let out = cmd!(sh, "dpkg-query -W {format} {names...}")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .context("asking dpkg-query which packages are installed (is this a Debian host?)")?;
    Ok(parse_dpkg_query(&out))
}

/// Parses `dpkg-query -W -f='${Package}\t${Status}\n'` output into the
/// names whose status is "install ok installed" (architecture qualifiers
/// such as `:amd64` are dropped).
pub fn parse_dpkg_query(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(name, _)| name.split(':').next().unwrap_or(name).to_string())
        .collect()
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

/// One `deb` entry of the apt sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// Parses deb822 `.sources` text: every enabled stanza whose `Types:`
/// include `deb`, one entry per URI.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut stanza: Vec<(String, String)> = Vec::new();
    let flush = |stanza: &mut Vec<(String, String)>, out: &mut Vec<AptSource>| {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| v != "no");
        if enabled && field("Types").iter().any(|t| t == "deb") {
            for uri in field("URIs") {
                out.push(AptSource {
                    uri,
                    suites: field("Suites"),
                    components: field("Components"),
                });
            }
        }
        stanza.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut stanza, &mut out);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            // A continuation line (multi-line fields such as Signed-By blocks).
            if let Some((_, v)) = stanza.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut stanza, &mut out);
    out
}

/// Parses one-line `sources.list` text: `deb [options] URI suite comp...`
/// lines (`deb-src` and comments are skipped).
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
        });
    }
    out
}

/// Picks the Debian mirror among `sources`: the first entry with a `main`
/// component and a suite that is not a security suite, preferring suites of
/// the host's release (`codename`, `codename-updates`, ...) so a third-party
/// repository is not mistaken for the mirror. Trailing slashes are dropped.
pub fn pick_mirror(sources: &[AptSource], codename: Option<&str>) -> Option<String> {
    let usable = |s: &&AptSource| {
        s.components.iter().any(|c| c == "main")
            && !s.uri.contains("security")
            && s.suites.iter().any(|suite| !is_security_suite(suite))
    };
    let of_release = |s: &&AptSource| {
        codename.is_some_and(|c| {
            s.suites
                .iter()
                .any(|suite| suite == c || suite.starts_with(&format!("{c}-")))
        })
    };
    sources
        .iter()
        .filter(usable)
        .find(of_release)
        .or_else(|| sources.iter().find(usable))
        .map(|s| s.uri.trim_end_matches('/').to_string())
}

fn is_security_suite(suite: &str) -> bool {
    suite.ends_with("-security") || suite.ends_with("/updates")
}

/// Every `deb` entry the host's apt knows: /etc/apt/sources.list.d/*.sources
/// (deb822), /etc/apt/sources.list and /etc/apt/sources.list.d/*.list.
pub fn system_sources() -> Result<Vec<AptSource>> {
    let mut out = Vec::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sources"))
    {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        out.extend(parse_deb822(&text));
    }
    let main_list = PathBuf::from("/etc/apt/sources.list");
    let lists = std::iter::once(&main_list).chain(
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "list")),
    );
    for path in lists {
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(parse_one_line(&text));
        }
    }
    Ok(out)
}

/// The Debian mirror URI this machine already uses, read from its apt
/// sources (never hard-coded).
pub fn system_mirror() -> Result<String> {
    let sources = system_sources()?;
    pick_mirror(&sources, os_codename().as_deref()).context(
        "no Debian mirror found in /etc/apt/sources.list{,.d/}: \
         the default kernel and the backports QEMU come from Debian's archive",
    )
}

/// Whether some apt source of this machine carries `suite`.
fn system_has_suite(suite: &str) -> Result<bool> {
    Ok(system_sources()?
        .iter()
        .any(|s| s.suites.iter().any(|x| x == suite)))
}

/// A deb822 stanza for `suite main` on `mirror`, signed by Debian's keyring.
pub fn backports_source(mirror: &str, suite: &str) -> String {
    format!(
        "Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\nSigned-By: {DEBIAN_KEYRING}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_mirror_skips_comments_and_security() {
        let sources = parse_deb822(DEB822);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(
            pick_mirror(&sources, Some("bookworm")).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn deb822_security_first_still_picks_the_main_mirror() {
        let text = "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                    Types: deb deb-src\nURIs: http://a.example/debian http://b.example/debian\nSuites: bookworm\nComponents: main contrib\n";
        assert_eq!(
            pick_mirror(&parse_deb822(text), Some("bookworm")).as_deref(),
            Some("http://a.example/debian")
        );
    }

    #[test]
    fn deb822_disabled_and_source_only_stanzas_are_ignored() {
        let text = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n\
                    Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n";
        assert!(parse_deb822(text).is_empty());
    }

    #[test]
    fn third_party_repositories_are_not_the_mirror() {
        let text = "Types: deb\nURIs: https://vendor.example/linux/debian\nSuites: bookworm\nComponents: stable\n\n\
                    Types: deb\nURIs: http://other.example/apt\nSuites: focal\nComponents: main\n\n\
                    Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n";
        assert_eq!(
            pick_mirror(&parse_deb822(text), Some("bookworm")).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn one_line_sources() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://sec.example/debian-security bookworm-security main
deb http://mirror.example/debian/ bookworm main contrib # trailing comment
";
        let sources = parse_one_line(text);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[1].components, ["main", "contrib"]);
        assert_eq!(
            pick_mirror(&sources, Some("bookworm")).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn no_mirror_when_nothing_fits() {
        assert_eq!(
            pick_mirror(
                &parse_one_line("deb-src http://x/debian bookworm main\n"),
                None
            ),
            None
        );
        assert_eq!(pick_mirror(&[], Some("bookworm")), None);
    }

    #[test]
    fn dpkg_query_status() {
        let out = "clang-19\tinstall ok installed\nudev\tdeinstall ok config-files\nlibelf-dev:amd64\tinstall ok installed\n";
        let set = parse_dpkg_query(out);
        assert!(set.contains("clang-19"));
        assert!(set.contains("libelf-dev"));
        assert!(!set.contains("udev"));
    }

    #[test]
    fn backports_stanza_parses_back() {
        let text = backports_source("http://mirror.example/debian", "bookworm-backports");
        let parsed = parse_deb822(&text);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].suites, ["bookworm-backports"]);
    }
}
