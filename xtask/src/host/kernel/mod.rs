//! `cargo xtask kernel`: obtains the kernel the VM boots and checks its
//! config against `kernel-config/scx_ballot.config`.
//!
//! Three sources ([`KernelChoice`]):
//! - `default`: Debian trixie-backports' `linux-image-cloud-amd64`, fetched
//!   with a private `APT_CONFIG` (own sources list, lists, cache and dpkg
//!   status under `cache_dir()/kernel/apt/`; the system's apt setup is only
//!   read, for its mirror URI) and unpacked with `dpkg-deb -x` into
//!   `cache_dir()/kernel/<version>/`. The version is the one
//!   `kernel-config/kernel.lock` names (see `lock.rs`): a complete
//!   unpacked tree of it is reused without touching the network; `--update`
//!   takes the newest and rewrites the lock.
//! - `host`: the running kernel, when it has sched_ext.
//! - a path to a bzImage/vmlinuz: the config is looked up beside it.
//!
//! Other commands take `--kernel` as a [`KernelChoice`] and call [`obtain`]
//! then [`verify_config`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use clap::Args;
use xshell::Shell;

use crate::project_root;

use self::lock::{self as kernel_lock, KernelLock, Package};

mod config;
mod debian;
mod local;
pub mod lock;

use debian::{kernel_cache, cached_debian_kernel, cached_tree, fetch_debian_kernel};
use local::{host_kernel, own_kernel};

pub use config::verify_config;

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

#[cfg(test)]
mod tests;
