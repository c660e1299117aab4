//! The host's running kernel, and a kernel image the user names.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use super::Kernel;
use super::config::image_version;
use super::debian::kernel_cache;

pub(super) fn host_kernel(sh: &Shell) -> Result<Kernel> {
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

pub(super) fn own_kernel(path: &Path) -> Result<Kernel> {
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
