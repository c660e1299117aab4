//! `scx_ballot exec -- CMD ARGS...`: put this process into SCHED_EXT and
//! become CMD. The policy is inherited across exec and fork, so CMD and its
//! children are scheduled by whichever sched_ext scheduler is attached (or
//! by the fair class while none is).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Result, bail};

use crate::bpf::set_sched_ext;
use crate::sched::SCHED_EXT;

/// Switches the calling process to SCHED_EXT.
pub fn enter_sched_ext() -> Result<()> {
    let Err(err) = set_sched_ext() else { return Ok(()) };
    match err.raw_os_error() {
        Some(libc::EINVAL) => bail!(
            "the kernel refused SCHED_EXT (policy {SCHED_EXT}): it was built without sched_ext \
             (CONFIG_SCHED_CLASS_EXT)"
        ),
        Some(libc::EPERM) => bail!(
            "the kernel refused SCHED_EXT (policy {SCHED_EXT}): not permitted ({err}); \
             run as root or with CAP_SYS_NICE"
        ),
        _ => bail!("the kernel refused SCHED_EXT (policy {SCHED_EXT}): {err}"),
    }
}

/// Enters SCHED_EXT, then replaces this process with `argv`; with
/// `candidate`, CMD and its children are members of that candidate (the
/// scheduler finds `SCX_BALLOT_CANDIDATE` in their environment) as long as
/// their uids are ones the scheduler trusts. Returns only on failure.
pub fn exec_in_sched_ext(argv: &[OsString], candidate: Option<&str>) -> Result<std::convert::Infallible> {
    let Some((program, args)) = argv.split_first() else {
        bail!("no command given: usage is `scx_ballot exec -- CMD [ARGS...]`");
    };
    if let Some(name) = candidate {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            bail!("invalid candidate name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . -");
        }
    }
    enter_sched_ext()?;
    if candidate.is_some() {
        warn_if_not_trusted_by_default();
    }
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(name) = candidate {
        cmd.env(crate::election::membership::CANDIDATE_ENV, name);
    }
    let err = cmd.exec();
    bail!("cannot run {}: {err}", program.to_string_lossy())
}

/// Says so when the marker will count only if the scheduler was told to
/// trust this uid (by default it trusts its own, root's, alone).
fn warn_if_not_trusted_by_default() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(me) = crate::election::procfs::parse_status(&status) else { return };
    if me.ruid != 0 || me.euid != 0 {
        log::warn!(
            "--candidate counts only for uids the scheduler trusts, and this runs as uid {} \
             (real {}): a scheduler of another uid needs --member-uid {} (or the uid in the \
             candidate's uids)",
            me.euid,
            me.ruid,
            me.euid
        );
    }
}
