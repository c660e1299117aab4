//! Debian's cloud kernel: found in the cache, or downloaded with a private
//! apt configuration and unpacked with `dpkg-deb -x`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::host::deps;
use crate::cache_dir;

use super::lock::{self as kernel_lock, KernelLock, Package};
use super::{META_PACKAGE, SUITE, COMPLETE_MARKER, Kernel};

pub(super) fn kernel_cache() -> PathBuf {
    cache_dir().join("kernel")
}

/// The unpacked Debian kernel named by `kernel/current`, if complete.
pub(super) fn cached_debian_kernel() -> Result<Option<Kernel>> {
    let Ok(version) = std::fs::read_to_string(kernel_cache().join("current")) else {
        return Ok(None);
    };
    Ok(cached_tree(version.trim()))
}

/// The unpacked tree of release `version`, if complete.
pub(super) fn cached_tree(version: &str) -> Option<Kernel> {
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
pub(super) fn fetch_debian_kernel(sh: &Shell, want: Option<&KernelLock>) -> Result<Kernel> {
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
