//! `cargo xtask kernel`: obtains the kernel the VM boots and checks its
//! config against `kernel-config/scx_ballot.config`.
//!
//! Three sources ([`KernelChoice`]):
//! - `default`: Debian trixie-backports' `linux-image-cloud-amd64`, fetched
//!   with a private `APT_CONFIG` (own sources list, lists, cache and dpkg
//!   status under `cache_dir()/kernel/apt/`; the system's apt setup is only
//!   read, for its mirror URI) and unpacked with `dpkg-deb -x` into
//!   `cache_dir()/kernel/<version>/`. The version is the one
//!   `kernel-config/kernel.lock` names (see `kernel_lock.rs`): a complete
//!   unpacked tree of it is reused without touching the network; `--update`
//!   takes the newest and rewrites the lock.
//! - `host`: the running kernel, when it has sched_ext.
//! - a path to a bzImage/vmlinuz: the config is looked up beside it.
//!
//! Other commands take `--kernel` as a [`KernelChoice`] and call [`obtain`]
//! then [`verify_config`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use clap::Args;
use xshell::{Shell, cmd};

use crate::host::kernel_lock::{self, KernelLock, Package};
use crate::host::deps;
use crate::{cache_dir, project_root};

/// The config fragment every VM kernel is checked against, relative to the
/// workspace root.
pub const FRAGMENT: &str = "kernel-config/scx_ballot.config";

/// Debian's metapackage that follows the newest cloud kernel.
const META_PACKAGE: &str = "linux-image-cloud-amd64";
/// The suite that carries a sched_ext kernel for Debian stable hosts.
const SUITE: &str = "trixie-backports";
/// Written last into an unpacked kernel: its presence means "complete".
const COMPLETE_MARKER: &str = ".complete";

/// Obtain the VM kernel and check its config.
#[derive(Debug, Args)]
pub struct KernelCmd {
    /// Which kernel: `default` downloads Debian's trixie-backports cloud
    /// kernel once (about 38 MB) and reuses it after; `host` uses the running
    /// kernel (only if it has sched_ext); anything else is a path to your own
    /// bzImage/vmlinuz, whose config is looked up beside it.
    #[arg(long, default_value = "default")]
    pub kernel: KernelChoice,

    /// The config fragment to check against (default:
    /// kernel-config/scx_ballot.config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// With the default kernel: take the newest version Debian serves and
    /// rewrite kernel-config/kernel.lock with it (the VM snapshots were
    /// recorded on the locked kernel: re-record them on the new one). Other
    /// runs boot the locked kernel, offline once it is unpacked.
    #[arg(long)]
    pub update: bool,
}

impl KernelCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let kernel = match (&self.kernel, self.update) {
            (KernelChoice::Default, true) => {
                let kernel = fetch_debian_kernel(sh, None)?;
                let lock = KernelLock { release: kernel.version.clone(), packages: kernel.packages.clone() };
                let before = KernelLock::read().ok().flatten();
                std::fs::write(KernelLock::path(), lock.render())
                    .with_context(|| format!("writing {}", kernel_lock::LOCK))?;
                match before {
                    Some(old) if old == lock => println!("kernel: {} already names {}", kernel_lock::LOCK, lock.describe()),
                    Some(old) => println!(
                        "kernel: {} now names {} (was {}): re-record the VM snapshots on it",
                        kernel_lock::LOCK,
                        lock.describe(),
                        old.describe()
                    ),
                    None => println!("kernel: {} written for {}", kernel_lock::LOCK, lock.describe()),
                }
                kernel
            }
            (choice, _) => obtain(sh, choice)?,
        };
        let fragment = self.config.unwrap_or_else(|| project_root().join(FRAGMENT));
        verify_config(&kernel, &fragment)?;
        println!("image:   {}", kernel.image.display());
        println!("version: {}", kernel.version);
        println!("source:  {}", kernel.source);
        if let Some(differs) = &kernel.differs {
            println!("!!! {differs}");
        }
        Ok(())
    }
}

/// Which kernel to boot: `default`, `host`, or a path to a kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    /// Debian trixie-backports' cloud kernel, downloaded once and cached.
    Default,
    /// The running kernel (needs /sys/kernel/sched_ext).
    Host,
    /// A bzImage/vmlinuz of your own.
    Path(PathBuf),
}

impl FromStr for KernelChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("empty kernel choice: use default, host or a path".into()),
            "default" => Ok(Self::Default),
            "host" => Ok(Self::Host),
            path => Ok(Self::Path(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Host => f.write_str("host"),
            Self::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage/vmlinuz to pass to `vng --run`. For the Debian kernel its
    /// modules sit beside it (`.../usr/lib/modules/<version>/`), where vng
    /// finds them.
    pub image: PathBuf,
    /// The kernel release, as `uname -r` prints it in the guest.
    pub version: String,
    /// Its `.config`, when known.
    pub config: Option<PathBuf>,
    /// Where it came from, for humans.
    pub source: String,
    /// Its Debian packages (the default kernel only).
    pub packages: Vec<Package>,
    /// Set when this is not the kernel kernel-config/kernel.lock names (the
    /// one the snapshots were recorded on): why, in one sentence.
    pub differs: Option<String>,
}

/// Gets the kernel for `choice`: downloads and unpacks Debian's on first use
/// (later calls are offline), or checks the host's or the given image.
pub fn obtain(sh: &Shell, choice: &KernelChoice) -> Result<Kernel> {
    match choice {
        KernelChoice::Default => default_kernel(sh),
        KernelChoice::Host => with_lock_note(host_kernel(sh)?),
        KernelChoice::Path(path) => with_lock_note(own_kernel(path)?),
    }
}

/// The locked kernel: unpacked already, or downloaded (checksums checked);
/// when Debian no longer serves it, the newest, marked as differing.
fn default_kernel(sh: &Shell) -> Result<Kernel> {
    let cached = cached_debian_kernel()?;
    let Some(lock) = KernelLock::read()? else {
        let mut kernel = match cached {
            Some(k) => k,
            None => fetch_debian_kernel(sh, None)?,
        };
        kernel.differs = Some(format!(
            "{} is missing: this run boots {}, and nothing says which kernel the snapshots were recorded on",
            kernel_lock::LOCK,
            kernel.version
        ));
        return Ok(kernel);
    };
    if let Some(k) = cached.iter().chain(cached_tree(&lock.release).iter()).find(|k| lock.matches(&k.version, &k.packages)) {
        std::fs::write(kernel_cache().join("current"), &k.version).context("recording the current kernel")?;
        return Ok(k.clone());
    }
    let why = match fetch_debian_kernel(sh, Some(&lock)) {
        Ok(kernel) => return Ok(kernel),
        Err(e) if format!("{e:#}").contains("checksum") => return Err(e),
        Err(e) => format!("{e:#}"),
    };
    println!("kernel: the locked kernel {} could not be had ({why}); taking the newest", lock.describe());
    let mut kernel = match fetch_debian_kernel(sh, None) {
        Ok(k) => k,
        Err(e) => match cached {
            Some(k) => {
                println!("kernel: the newest could not be had either ({e:#}); booting the unpacked {}", k.version);
                k
            }
            None => return Err(e),
        },
    };
    kernel.differs = Some(differs_note(&lock, &kernel));
    Ok(kernel)
}

/// The sentence every summary and snapshot failure repeats.
fn differs_note(lock: &KernelLock, kernel: &Kernel) -> String {
    let version = kernel.packages.first().map(|p| format!(" ({})", p.version)).unwrap_or_default();
    format!(
        "KERNEL DIFFERS: the snapshots were recorded on {} ({}), this run boots {}{version} ({})",
        lock.describe(),
        kernel_lock::LOCK,
        kernel.version,
        kernel.source
    )
}

/// A host or user kernel, marked when its release is not the locked one.
fn with_lock_note(mut kernel: Kernel) -> Result<Kernel> {
    if let Some(lock) = KernelLock::read()?
        && kernel.version != lock.release
    {
        kernel.differs = Some(differs_note(&lock, &kernel));
    }
    Ok(kernel)
}

/// Checks `kernel`'s config against the fragment file: prints every missing
/// option and fails if any is missing. A kernel without a known config gets
/// a warning, not an error (its config cannot be checked).
pub fn verify_config(kernel: &Kernel, fragment: &Path) -> Result<()> {
    let fragment_text = std::fs::read_to_string(fragment)
        .with_context(|| format!("reading the config fragment {}", fragment.display()))?;
    let Some(config_path) = &kernel.config else {
        eprintln!(
            "warning: no config found for {}: cannot check it against {}",
            kernel.image.display(),
            fragment.display()
        );
        return Ok(());
    };
    let config = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading the kernel config {}", config_path.display()))?;
    let missing = check_config(&config, &fragment_text);
    let checked = parse_fragment(&fragment_text).len();
    if missing.is_empty() {
        println!(
            "config:  {} has all {checked} options of {}",
            config_path.display(),
            fragment.display()
        );
        return Ok(());
    }
    for m in &missing {
        eprintln!("missing: {m}");
    }
    bail!(
        "the kernel {} lacks {} of the {checked} options in {}",
        kernel.version,
        missing.len(),
        fragment.display()
    )
}

/// One fragment option the config does not satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// `CONFIG_...`
    pub option: String,
    /// What the fragment asks for: `y`, `y or m`, `not set`, or a value.
    pub required: String,
    /// What the config has: `m`, `not set`, `absent`, or a value.
    pub found: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: need {}, found {}",
            self.option, self.required, self.found
        )
    }
}

/// What a fragment line asks of one option.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `=y`
    BuiltIn,
    /// `=y # module ok`
    BuiltInOrModule,
    /// `# CONFIG_X is not set`
    NotSet,
    /// Any other value, compared verbatim (`=64`, `="string"`).
    Value(String),
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("y"),
            Self::BuiltInOrModule => f.write_str("y or m"),
            Self::NotSet => f.write_str("not set"),
            Self::Value(v) => f.write_str(v),
        }
    }
}

/// The marker that lets a `=y` fragment line accept `=m`.
const MODULE_OK: &str = "module ok";

/// Parses a fragment into (option, requirement) pairs. Lines that are not
/// options (comments, blanks, malformed lines) are skipped; the `tidy`-style
/// test `fragment_is_well_formed` keeps the real fragment free of the latter.
fn parse_fragment(fragment: &str) -> Vec<(String, Requirement)> {
    fragment
        .lines()
        .filter_map(|line| parse_fragment_line(line).ok().flatten())
        .collect()
}

/// `Ok(None)` for comments and blank lines, `Err` for a line that looks like
/// neither a comment nor an option.
fn parse_fragment_line(line: &str) -> Result<Option<(String, Requirement)>, String> {
    let line = line.trim();
    if let Some(name) = not_set_line(line) {
        return Ok(Some((name.to_string(), Requirement::NotSet)));
    }
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (setting, comment) = match line.split_once('#') {
        Some((s, c)) => (s.trim(), Some(c.trim())),
        None => (line, None),
    };
    let Some((name, value)) = setting.split_once('=') else {
        return Err(format!("not an option line: {line}"));
    };
    if !name.starts_with("CONFIG_") || value.is_empty() {
        return Err(format!("not an option line: {line}"));
    }
    let module_ok = match comment {
        None => false,
        Some(c) if c == MODULE_OK => true,
        Some(c) => return Err(format!("unknown marker `# {c}` (only `# {MODULE_OK}`)")),
    };
    let req = match (value, module_ok) {
        ("y", false) => Requirement::BuiltIn,
        ("y", true) => Requirement::BuiltInOrModule,
        (_, true) => return Err(format!("`# {MODULE_OK}` only goes with =y: {line}")),
        (v, false) => Requirement::Value(v.to_string()),
    };
    Ok(Some((name.to_string(), req)))
}

/// The option name of a `# CONFIG_X is not set` line.
fn not_set_line(line: &str) -> Option<&str> {
    let name = line.strip_prefix("# ")?.strip_suffix(" is not set")?;
    name.starts_with("CONFIG_").then_some(name)
}

/// Parses a kernel `.config` into option → value, with `n` for
/// `# CONFIG_X is not set`.
fn parse_config(config: &str) -> HashMap<&str, &str> {
    let mut map = HashMap::new();
    for line in config.lines().map(str::trim) {
        if let Some(name) = not_set_line(line) {
            map.insert(name, "n");
        } else if let Some((name, value)) = line.split_once('=')
            && name.starts_with("CONFIG_")
        {
            map.insert(name, value);
        }
    }
    map
}

/// Compares a kernel `.config` with a fragment and returns every fragment
/// option the config does not satisfy, in fragment order.
///
/// `=y` needs `=y`; `=y # module ok` accepts `=y` or `=m`;
/// `# CONFIG_X is not set` needs the option unset or absent; other values
/// must match verbatim.
pub fn check_config(config: &str, fragment: &str) -> Vec<Missing> {
    let have = parse_config(config);
    parse_fragment(fragment)
        .into_iter()
        .filter_map(|(option, req)| {
            let found = have.get(option.as_str()).copied();
            let ok = match (&req, found) {
                (Requirement::BuiltIn, Some("y")) => true,
                (Requirement::BuiltInOrModule, Some("y" | "m")) => true,
                (Requirement::NotSet, None | Some("n")) => true,
                (Requirement::Value(v), Some(f)) => v == f,
                _ => false,
            };
            (!ok).then(|| Missing {
                option,
                required: req.to_string(),
                found: match found {
                    None => "absent".to_string(),
                    Some("n") => "not set".to_string(),
                    Some(v) => v.to_string(),
                },
            })
        })
        .collect()
}

/// The kernel release string of a bzImage (from its setup header), if the
/// bytes are one.
pub fn bzimage_version(image: &[u8]) -> Option<String> {
    // Linux boot protocol: "HdrS" at 0x202, and at 0x20e the offset (minus
    // 0x200) of a NUL-terminated "<release> (<builder>) #1 SMP ..." string.
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]) as usize;
    if ptr == 0 {
        return None;
    }
    let text = image.get(ptr + 0x200..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let version = std::str::from_utf8(&text[..end]).ok()?;
    (!version.is_empty()).then(|| version.to_string())
}

fn image_version(image: &Path) -> Result<String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(image)
        .with_context(|| format!("opening the kernel image {}", image.display()))?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .with_context(|| format!("reading the kernel image {}", image.display()))?;
    bzimage_version(&head).with_context(|| {
        format!(
            "{} is not an x86 bzImage (no version in its boot header)",
            image.display()
        )
    })
}

// ---------------------------------------------------------------------------
// Debian's kernel

fn kernel_cache() -> PathBuf {
    cache_dir().join("kernel")
}

/// The unpacked Debian kernel named by `kernel/current`, if complete.
fn cached_debian_kernel() -> Result<Option<Kernel>> {
    let Ok(version) = std::fs::read_to_string(kernel_cache().join("current")) else {
        return Ok(None);
    };
    Ok(cached_tree(version.trim()))
}

/// The unpacked tree of release `version`, if complete.
fn cached_tree(version: &str) -> Option<Kernel> {
    let dir = kernel_cache().join(version);
    let marker = std::fs::read_to_string(dir.join(COMPLETE_MARKER)).ok()?;
    kernel_from_tree(&dir, version, &marker, "cached")
}

/// A Kernel for an unpacked package tree, if its image is there.
fn kernel_from_tree(dir: &Path, version: &str, marker: &str, how: &str) -> Option<Kernel> {
    let image = [
        format!("usr/lib/modules/{version}/vmlinuz"),
        format!("boot/vmlinuz-{version}"),
    ]
    .iter()
    .map(|p| dir.join(p))
    .find(|p| p.is_file())?;
    let config = [
        format!("usr/lib/modules/{version}/config"),
        format!("boot/config-{version}"),
    ]
    .iter()
    .map(|p| dir.join(p))
    .find(|p| p.is_file());
    // The marker lists "package version [sha256]" lines; all share one
    // version.
    let packages = kernel_lock::parse_packages(marker);
    let package_version = packages.first().map_or("(unknown version)", |p| p.version.as_str());
    Some(Kernel {
        image,
        version: version.to_string(),
        config,
        source: format!("Debian {SUITE} {META_PACKAGE} {package_version}, {how}"),
        packages,
        differs: None,
    })
}

/// Downloads and unpacks the locked kernel (`want`; checksums checked) or,
/// without one, the newest Debian cloud kernel, reusing an unpacked tree of
/// that version when it is complete (and, for the newest, has checksums).
fn fetch_debian_kernel(sh: &Shell, want: Option<&KernelLock>) -> Result<Kernel> {
    if std::env::consts::ARCH != "x86_64" {
        bail!(
            "the default kernel is Debian's amd64 cloud kernel: on this machine pass --kernel PATH"
        );
    }
    deps::ensure_kernel_fetch_deps(sh)?;
    let root = kernel_cache();
    let apt = PrivateApt::create(&root.join("apt"))?;

    println!(
        "kernel: updating the {SUITE} package list from {}",
        apt.mirror
    );
    apt.cmd(sh, "apt-get", &["-qq", "update"]).run().context(
        "apt-get update for trixie-backports (on NO_PUBKEY: upgrade debian-archive-keyring)",
    )?;

    let (version, packages) = match want {
        Some(lock) => (
            lock.release.clone(),
            lock.packages.iter().map(|p| format!("{}={}", p.name, p.version)).collect::<Vec<_>>(),
        ),
        None => {
            let meta_deps = apt
                .cmd(sh, "apt-cache", &["depends", META_PACKAGE])
                .read()
                .with_context(|| format!("resolving {META_PACKAGE}"))?;
            let version = image_release(&parse_depends(&meta_deps)).with_context(|| {
                format!("{META_PACKAGE} depends on no linux-image-<version> package:\n{meta_deps}")
            })?;
            let image_pkg = format!("linux-image-{version}");
            let image_deps = apt
                .cmd(sh, "apt-cache", &["depends", &image_pkg])
                .read()
                .with_context(|| format!("resolving {image_pkg}"))?;
            let packages = kernel_packages(&version, &parse_depends(&image_deps));
            (version, packages)
        }
    };

    let dir = root.join(&version);
    if let Ok(marker) = std::fs::read_to_string(dir.join(COMPLETE_MARKER))
        && let Some(kernel) = kernel_from_tree(&dir, &version, &marker, "cached")
        && match want {
            Some(lock) => lock.matches(&version, &kernel.packages),
            None => kernel.packages.iter().all(|p| !p.sha256.is_empty()),
        }
    {
        println!("kernel: {version} is already unpacked");
        std::fs::write(root.join("current"), &version).context("recording the current kernel")?;
        return Ok(kernel);
    }

    let debs = root.join("debs");
    recreate_dir(&debs)?;
    println!("kernel: downloading {}", packages.join(" "));
    {
        let _cwd = sh.push_dir(&debs);
        let args: Vec<&str> = ["-q", "download"]
            .into_iter()
            .chain(packages.iter().map(String::as_str))
            .collect();
        apt.cmd(sh, "apt-get", &args)
            .run()
            .context("downloading the kernel packages")?;
    }

    let partial = root.join(format!("{version}.partial"));
    recreate_dir(&partial)?;
    let mut marker = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    if files.len() != packages.len() {
        bail!(
            "expected {} packages in {}, found {}",
            packages.len(),
            debs.display(),
            files.len()
        );
    }
    for deb in &files {
        let name = deb.file_name().unwrap_or_default().to_string_lossy();
        println!("kernel: unpacking {name}");
        cmd!(sh, "dpkg-deb -x {deb} {partial}")
            .quiet()
            .run()
            .with_context(|| format!("unpacking {}", deb.display()))?;
        let fields = cmd!(sh, "dpkg-deb -f {deb} Package Version")
            .quiet()
            .read()
            .with_context(|| format!("reading the fields of {}", deb.display()))?;
        let mut it = fields
            .lines()
            .filter_map(|l| l.split_once(": ").map(|(_, v)| v));
        let sums = cmd!(sh, "sha256sum {deb}")
            .quiet()
            .read()
            .with_context(|| format!("checksumming {}", deb.display()))?;
        let package = Package {
            name: it.next().unwrap_or("?").to_string(),
            version: it.next().unwrap_or("?").to_string(),
            sha256: sums.split_whitespace().next().unwrap_or("").to_string(),
        };
        if let Some(lock) = want
            && let Some(locked) = lock.packages.iter().find(|p| p.name == package.name)
            && locked.sha256 != package.sha256
        {
            bail!(
                "{name}: checksum {} differs from the one in {} ({}): not booting it",
                package.sha256,
                kernel_lock::LOCK,
                locked.sha256
            );
        }
        marker += &format!("{}\n", package.line());
    }
    generate_module_index(sh, &partial, &version);
    std::fs::write(partial.join(COMPLETE_MARKER), &marker)
        .context("writing the completion marker")?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the stale {}", dir.display()))?;
    }
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("moving the kernel into {}", dir.display()))?;
    std::fs::remove_dir_all(&debs).ok();
    std::fs::write(root.join("current"), &version).context("recording the current kernel")?;

    let kernel = kernel_from_tree(&dir, &version, &marker, "downloaded").with_context(|| {
        format!(
            "no vmlinuz for {version} in the unpacked packages under {}",
            dir.display()
        )
    })?;
    println!("kernel: {version} unpacked into {}", dir.display());
    Ok(kernel)
}

/// Runs depmod on the unpacked tree so vng does not have to (and several
/// VMs never race on it). Best effort: without depmod, vng does it later.
fn generate_module_index(sh: &Shell, tree: &Path, version: &str) {
    let base = tree.join("usr");
    if !base.join("lib/modules").join(version).is_dir() {
        return;
    }
    let depmod = ["/usr/sbin/depmod", "/sbin/depmod"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if let Some(depmod) = depmod {
        let _ = cmd!(sh, "{depmod} -a -b {base} {version}")
            .quiet()
            .ignore_stderr()
            .run();
    }
}

fn recreate_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The dependency names in `apt-cache depends` output: `Depends:` and
/// `PreDepends:` lines, alternatives included, virtual (`<...>`) ones left out.
pub fn parse_depends(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim().trim_start_matches('|'))
        .filter_map(|l| {
            l.strip_prefix("Depends:")
                .or_else(|| l.strip_prefix("PreDepends:"))
        })
        .map(str::trim)
        .filter(|name| !name.starts_with('<'))
        .map(str::to_string)
        .collect()
}

/// The kernel release out of the metapackage's dependencies:
/// `linux-image-7.3.4+deb13-cloud-amd64` → `7.3.4+deb13-cloud-amd64`.
pub fn image_release(meta_deps: &[String]) -> Option<String> {
    meta_deps.iter().find_map(|d| {
        let rest = d.strip_prefix("linux-image-")?;
        rest.starts_with(|c: char| c.is_ascii_digit())
            .then(|| rest.to_string())
    })
}

/// The packages to fetch for release `version`: `linux-image-<version>` and
/// every `linux-*-<version>` it depends on (7.x splits the image into
/// `linux-binary-`, `linux-base-` and `linux-modules-`; older kernels have
/// everything in the image package).
pub fn kernel_packages(version: &str, image_deps: &[String]) -> Vec<String> {
    let suffix = format!("-{version}");
    let mut out = vec![format!("linux-image-{version}")];
    for dep in image_deps {
        if dep.starts_with("linux-") && dep.ends_with(&suffix) && !out.contains(dep) {
            out.push(dep.clone());
        }
    }
    out
}

/// An apt configuration of our own: one source (trixie-backports main on
/// the system's mirror), its own lists, cache and dpkg status, and no
/// system pinning; only the system's apt.conf.d (proxies) still applies.
struct PrivateApt {
    config: PathBuf,
    mirror: String,
}

impl PrivateApt {
    fn create(dir: &Path) -> Result<Self> {
        let mirror = deps::system_mirror()?;
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let keyring = deps::DEBIAN_KEYRING;
        std::fs::write(
            dir.join("sources.list"),
            format!("deb [signed-by={keyring}] {mirror} {SUITE} main\n"),
        )
        .context("writing the private sources list")?;
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "").context("writing the private dpkg status")?;
        }
        let d = dir.display();
        // As root, apt downloads as the `_apt` user, who may not be able to
        // write into the project's folders: stay root for these downloads.
        let sandbox = if deps::is_root() {
            "APT::Sandbox::User \"root\";\n"
        } else {
            ""
        };
        let config = dir.join("apt.conf");
        std::fs::write(
            &config,
            format!(
                "Dir::Etc::SourceList \"{d}/sources.list\";\n\
                 Dir::Etc::SourceParts \"{d}/sources.list.d\";\n\
                 Dir::Etc::Preferences \"{d}/preferences\";\n\
                 Dir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
                 Dir::State \"{d}\";\n\
                 Dir::State::Lists \"{d}/lists\";\n\
                 Dir::State::status \"{d}/status\";\n\
                 Dir::Cache \"{d}/cache\";\n\
                 APT::Architecture \"amd64\";\n\
                 APT::Architectures {{ \"amd64\"; }};\n\
                 Acquire::Languages \"none\";\n\
                 {sandbox}"
            ),
        )
        .context("writing the private apt.conf")?;
        Ok(Self { config, mirror })
    }

    fn cmd<'a>(&self, sh: &'a Shell, program: &str, args: &[&str]) -> xshell::Cmd<'a> {
        cmd!(sh, "{program} {args...}").env("APT_CONFIG", &self.config)
    }
}

// ---------------------------------------------------------------------------
// The host's kernel and the user's own

fn host_kernel(sh: &Shell) -> Result<Kernel> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the running kernel's release")?
        .trim()
        .to_string();
    if !Path::new("/sys/kernel/sched_ext").exists() {
        bail!(
            "the running kernel {release} has no sched_ext (/sys/kernel/sched_ext is missing): \
             use --kernel default (Debian's cloud kernel) or --kernel PATH"
        );
    }
    let image = [
        format!("/boot/vmlinuz-{release}"),
        format!("/usr/lib/modules/{release}/vmlinuz"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .with_context(|| {
        format!("no image of the running kernel {release} in /boot or /usr/lib/modules")
    })?;
    std::fs::File::open(&image)
        .with_context(|| format!("{} is not readable (vng needs to read it)", image.display()))?;

    let mut config = [
        format!("/boot/config-{release}"),
        format!("/usr/lib/modules/{release}/config"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    if config.is_none() && Path::new("/proc/config.gz").exists() {
        let text = cmd!(sh, "gzip -dc /proc/config.gz")
            .quiet()
            .read()
            .context("reading /proc/config.gz")?;
        let path = kernel_cache().join(format!("host-{release}.config"));
        std::fs::create_dir_all(kernel_cache())?;
        std::fs::write(&path, text + "\n").context("saving the host kernel's config")?;
        config = Some(path);
    }
    Ok(Kernel {
        image,
        version: release,
        config,
        source: "the running kernel".to_string(),
        packages: Vec::new(),
        differs: None,
    })
}

fn own_kernel(path: &Path) -> Result<Kernel> {
    let image = path
        .canonicalize()
        .with_context(|| format!("kernel image {}", path.display()))?;
    if !image.is_file() {
        bail!(
            "{} is not a file: --kernel takes a bzImage/vmlinuz",
            image.display()
        );
    }
    let version = image_version(&image)?;
    let config = config_beside(&image, &version);
    Ok(Kernel {
        image: image.clone(),
        version,
        config,
        source: format!("your image {}", image.display()),
        packages: Vec::new(),
        differs: None,
    })
}

/// Looks for the config of an image: `config-<version>` or `config` beside
/// it (a /boot or module-tree layout), or `.config` in its folder or up to
/// three levels above (a build tree's `arch/x86/boot/bzImage`).
fn config_beside(image: &Path, version: &str) -> Option<PathBuf> {
    let dir = image.parent()?;
    let mut candidates = vec![dir.join(format!("config-{version}")), dir.join("config")];
    candidates.extend(dir.ancestors().take(4).map(|d| d.join(".config")));
    candidates.into_iter().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAG: &str = "\
# sched_ext
CONFIG_SCHED_CLASS_EXT=y
CONFIG_OVERLAY_FS=y # module ok
CONFIG_VIRTIO_NET=y   #   module ok
# CONFIG_SCHED_CORE is not set
CONFIG_HZ=1000
";

    fn missing(config: &str) -> Vec<String> {
        check_config(config, FRAG)
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    #[test]
    fn satisfied_config_has_nothing_missing() {
        let config = "CONFIG_SCHED_CLASS_EXT=y\nCONFIG_OVERLAY_FS=m\nCONFIG_VIRTIO_NET=y\n\
                      # CONFIG_SCHED_CORE is not set\nCONFIG_HZ=1000\n";
        assert_eq!(missing(config), Vec::<String>::new());
    }

    #[test]
    fn module_only_where_marked() {
        let config =
            "CONFIG_SCHED_CLASS_EXT=m\nCONFIG_OVERLAY_FS=m\nCONFIG_VIRTIO_NET=m\nCONFIG_HZ=1000\n";
        assert_eq!(missing(config), ["CONFIG_SCHED_CLASS_EXT: need y, found m"]);
    }

    #[test]
    fn not_set_and_absent_are_reported() {
        let config = "# CONFIG_SCHED_CLASS_EXT is not set\nCONFIG_SCHED_CORE=y\nCONFIG_HZ=250\n";
        assert_eq!(
            missing(config),
            [
                "CONFIG_SCHED_CLASS_EXT: need y, found not set",
                "CONFIG_OVERLAY_FS: need y or m, found absent",
                "CONFIG_VIRTIO_NET: need y or m, found absent",
                "CONFIG_SCHED_CORE: need not set, found y",
                "CONFIG_HZ: need 1000, found 250",
            ]
        );
    }

    #[test]
    fn missing_carries_the_parts() {
        let m = &check_config("", "CONFIG_BPF=y\n")[0];
        assert_eq!(
            (m.option.as_str(), m.required.as_str(), m.found.as_str()),
            ("CONFIG_BPF", "y", "absent")
        );
    }

    #[test]
    fn malformed_fragment_lines_are_errors() {
        assert!(parse_fragment_line("BPF=y").is_err());
        assert!(parse_fragment_line("CONFIG_BPF").is_err());
        assert!(parse_fragment_line("CONFIG_BPF=y # modules welcome").is_err());
        assert!(parse_fragment_line("CONFIG_HZ=1000 # module ok").is_err());
        assert_eq!(parse_fragment_line("# a comment"), Ok(None));
    }

    #[test]
    fn fragment_is_well_formed() {
        let text = include_str!("../../../kernel-config/scx_ballot.config");
        for line in text.lines() {
            if let Err(e) = parse_fragment_line(line) {
                panic!("kernel-config/scx_ballot.config: {e}");
            }
        }
        let options = parse_fragment(text);
        for must in [
            "CONFIG_SCHED_CLASS_EXT",
            "CONFIG_BPF_SYSCALL",
            "CONFIG_DEBUG_INFO_BTF",
        ] {
            assert!(
                options
                    .iter()
                    .any(|(o, r)| o == must && *r == Requirement::BuiltIn),
                "{must} must be required built in"
            );
        }
    }

    #[test]
    fn choice_parses() {
        assert_eq!("default".parse::<KernelChoice>(), Ok(KernelChoice::Default));
        assert_eq!("host".parse::<KernelChoice>(), Ok(KernelChoice::Host));
        assert_eq!(
            "/tmp/bzImage".parse::<KernelChoice>(),
            Ok(KernelChoice::Path("/tmp/bzImage".into()))
        );
        assert!("".parse::<KernelChoice>().is_err());
    }

    #[test]
    fn depends_resolution() {
        let meta = "linux-image-cloud-amd64\n  Depends: linux-base-cloud-amd64\n  \
                    Depends: linux-image-7.3.4+deb13-cloud-amd64\n  Depends: linux-modules-cloud-amd64\n";
        let version = image_release(&parse_depends(meta)).unwrap();
        assert_eq!(version, "7.3.4+deb13-cloud-amd64");
        let image = "linux-image-7.3.4+deb13-cloud-amd64\n  PreDepends: linux-base\n \
                     |Depends: <dracut>\n |Depends: <initramfs-tools>\n  Depends: <linux-initramfs-tool>\n  \
                     Depends: linux-base-7.3.4+deb13-cloud-amd64\n  Depends: linux-binary-7.3.4+deb13-cloud-amd64\n  \
                     Depends: linux-modules-7.3.4+deb13-cloud-amd64\n  Breaks: <fwupdate>\n  \
                     Suggests: linux-doc-7.3\n";
        assert_eq!(
            kernel_packages(&version, &parse_depends(image)),
            [
                "linux-image-7.3.4+deb13-cloud-amd64",
                "linux-base-7.3.4+deb13-cloud-amd64",
                "linux-binary-7.3.4+deb13-cloud-amd64",
                "linux-modules-7.3.4+deb13-cloud-amd64",
            ]
        );
    }

    #[test]
    fn bzimage_header_version() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let s = b"7.3.4+deb13-cloud-amd64 (debian-kernel@example) #1 SMP\0";
        img[0x500..0x500 + s.len()].copy_from_slice(s);
        assert_eq!(
            bzimage_version(&img).as_deref(),
            Some("7.3.4+deb13-cloud-amd64")
        );
        img[0x202] = b'X';
        assert_eq!(bzimage_version(&img), None);
        assert_eq!(bzimage_version(b"short"), None);
    }
}
