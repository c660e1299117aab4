//! The `vng` invocation: its arguments for a [`VmSpec`] and
//! the command that runs it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

use crate::host::deps::VmTools;
use crate::cache_dir;

use super::MODULE_BLACKLIST;
use super::accel::Accel;
use super::boot::VmSpec;

pub(super) fn absolute_script(script: &Path) -> Result<PathBuf> {
    if script.components().count() == 1 && !script.exists() {
        // A bare command name such as `true`: the guest's PATH finds it.
        return Ok(script.to_path_buf());
    }
    script
        .canonicalize()
        .with_context(|| format!("the guest command {}", script.display()))
}

/// The `vng` arguments for `spec` (without the program name).
///
/// Always `--disable-microvm`: vng would pick QEMU's microvm machine under
/// KVM, which needs virtio-mmio built in, and Debian builds it as a module
/// that vng's busybox initramfs cannot load. q35 works for both
/// accelerators. `--verbose` routes the kernel console to stderr, where it is
/// captured.
pub fn vng_args(spec: &VmSpec, script: &Path, args: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        "--verbose".into(),
        "--run".into(),
        spec.kernel.image.clone().into(),
    ];
    if spec.accel == Accel::Tcg {
        out.push("--disable-kvm".into());
    }
    out.push("--disable-microvm".into());
    out.extend(["--cpus".into(), spec.cpus.to_string().into()]);
    out.extend(["--memory".into(), format!("{}M", spec.memory_mib).into()]);
    out.extend(["-a".into(), MODULE_BLACKLIST.into()]);
    if !spec.cmdline_extra.is_empty() {
        out.extend(["-a".into(), spec.cmdline_extra.join(" ").into()]);
    }
    for dir in &spec.rwdirs {
        let mut arg = OsString::from("--rwdir=");
        arg.push(dir);
        out.push(arg);
    }
    if !spec.forward_ports.is_empty() {
        let fwds: String = spec
            .forward_ports
            .iter()
            .map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
            .collect();
        out.extend([
            "-a".into(),
            "virtme.dhcp net.ifnames=0 biosdevname=0".into(),
        ]);
        let mut rodir = OsString::from("--rodir=/etc/systemd/network=");
        rodir.push(net_link_dir());
        out.push(rodir);
        out.push(
            format!("--qemu-opts=-device virtio-net-pci,netdev=fwd -netdev user,id=fwd{fwds}")
                .into(),
        );
    }
    out.push("--".into());
    out.push(script.into());
    out.extend(args.iter().map(OsString::from));
    out
}

/// A folder holding one systemd `.link` file that keeps the kernel's
/// interface names, mounted over the guest's /etc/systemd/network when ports
/// are forwarded. virtme-ng-init configures `eth0` by name, but a guest udev
/// that believes it runs in a container (the host's `/.dockerenv` is visible
/// in the guest) ignores `net.ifnames=0` and renames it to `enp0sN`.
fn net_link_dir() -> PathBuf {
    cache_dir().join("vm").join("net-link")
}

const NET_LINK_FILE: &str = "[Match]\nOriginalName=*\n\n[Link]\nNamePolicy=kernel\n";

pub(super) fn write_net_link() -> Result<()> {
    let dir = net_link_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("10-scx-ballot-kernel-names.link"), NET_LINK_FILE)
        .context("writing the guest's network .link file")
}

pub(super) fn vng_command(sh: &Shell, tools: &VmTools, args: &[OsString]) -> Command {
    let vng = &tools.vng;
    cmd!(sh, "{vng} {args...}")
        .env("PATH", tools.path_env())
        .into()
}
