//! Installing Debian packages with apt-get: what is missing, from which
//! suite, `apt-get update` at most once per process.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use super::{Pkg, is_debian, is_root, os_codename};
use super::sources::{system_mirror, system_has_suite, backports_source};

/// Whether `apt-get update` already ran in this process.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Installs the missing ones among `pkgs` (from the default suites) and
/// `backports` (from `<codename>-backports` on bookworm, where the default
/// suites carry versions too old for us; elsewhere from the default suites).
pub(super) fn ensure_apt(sh: &Shell, pkgs: &[Pkg], backports: &[Pkg]) -> Result<()> {
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
