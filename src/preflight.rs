//! Checks made before the BPF program is loaded, so that a user gets one
//! clear line instead of a verifier or libbpf error.

use std::path::Path;

use anyhow::{Result, bail};

/// Where the kernel describes sched_ext.
pub const SCHED_EXT_SYSFS: &str = "/sys/kernel/sched_ext";

/// Linux capability number of CAP_SYS_ADMIN, which attaching a sched_ext
/// scheduler requires.
const CAP_SYS_ADMIN: u32 = 21;

/// What preflight found out about the machine, gathered from `/sys` and
/// `/proc` so that the decision itself is a pure function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `/sys/kernel/sched_ext` exists.
    pub has_sched_ext: bool,
    /// Contents of `/sys/kernel/sched_ext/state`, trimmed.
    pub state: Option<String>,
    /// Contents of `/sys/kernel/sched_ext/root/ops`, trimmed.
    pub loaded_ops: Option<String>,
    /// The `CapEff:` mask of this process.
    pub cap_eff: Option<u64>,
}

impl HostFacts {
    pub fn read() -> Self {
        let root = Path::new(SCHED_EXT_SYSFS);
        let read = |p: &Path| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
        HostFacts {
            has_sched_ext: root.is_dir(),
            state: read(&root.join("state")),
            loaded_ops: read(&root.join("root/ops")),
            cap_eff: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| parse_cap_eff(&s)),
        }
    }
}

/// Refuses to go on, with one line naming the problem and the way out.
pub fn check(facts: &HostFacts) -> Result<()> {
    if !facts.has_sched_ext {
        bail!(
            "this kernel has no sched_ext ({SCHED_EXT_SYSFS} is missing): boot a kernel built \
             with CONFIG_SCHED_CLASS_EXT=y, or use `cargo xtask run`, which starts one in a VM"
        );
    }
    match facts.state.as_deref() {
        Some("disabled") | None => {}
        Some(state) => {
            let who = facts.loaded_ops.as_deref().unwrap_or("an unknown scheduler");
            bail!(
                "another sched_ext scheduler is loaded ({who}, state {state}): stop it first, \
                 only one can be attached at a time"
            );
        }
    }
    match facts.cap_eff {
        Some(caps) if caps & (1 << CAP_SYS_ADMIN) != 0 => Ok(()),
        _ => bail!(
            "loading a sched_ext scheduler needs root (CAP_SYS_ADMIN): run it with sudo"
        ),
    }
}

/// The hexadecimal `CapEff:` mask of a `/proc/PID/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_facts() -> HostFacts {
        HostFacts {
            has_sched_ext: true,
            state: Some("disabled".into()),
            loaded_ops: None,
            cap_eff: Some(0x000001ffffffffff),
        }
    }

    #[test]
    fn a_ready_host_passes() {
        check(&ok_facts()).unwrap();
    }

    #[test]
    fn no_sched_ext_is_refused_first() {
        let facts = HostFacts { has_sched_ext: false, state: None, cap_eff: Some(0), ..ok_facts() };
        let err = check(&facts).unwrap_err().to_string();
        assert!(err.contains("no sched_ext"), "{err}");
    }

    #[test]
    fn another_scheduler_is_named() {
        let facts = HostFacts {
            state: Some("enabled".into()),
            loaded_ops: Some("scx_lavd_1.0.0".into()),
            ..ok_facts()
        };
        let err = check(&facts).unwrap_err().to_string();
        assert!(err.contains("another sched_ext scheduler") && err.contains("scx_lavd"), "{err}");
    }

    #[test]
    fn a_scheduler_on_its_way_out_still_blocks() {
        let facts = HostFacts { state: Some("disabling".into()), ..ok_facts() };
        assert!(check(&facts).is_err());
    }

    #[test]
    fn missing_cap_sys_admin_is_refused() {
        // Every capability but CAP_SYS_ADMIN.
        let facts = HostFacts { cap_eff: Some(0x000001ffffffffff & !(1 << 21)), ..ok_facts() };
        let err = check(&facts).unwrap_err().to_string();
        assert!(err.contains("needs root"), "{err}");
    }

    #[test]
    fn cap_eff_is_parsed_from_status() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(parse_cap_eff(status), Some(0x000001ffffffffff));
        assert_eq!(parse_cap_eff("Name:\tcat\n"), None);
    }
}
