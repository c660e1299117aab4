//! The identity of a `pid` member: the start time and boot that pin it to one
//! process, filled in from `/proc` when a create or an add brings it in.

use crate::ballot::{BallotError, Event};
use crate::election::procfs::{current_boot_id, proc_start_time, proc_tgid};
use crate::election::view::Member;

pub(super) fn without_start_time(member: &Member) -> Member {
    match member {
        Member::Pid { pid, .. } => Member::Pid { pid: *pid, start_time: None, boot_id: None },
        other => other.clone(),
    }
}

/// Pins the identity of the `pid` members a create or an add brings in.
pub(super) fn fill_start_times(event: Event) -> Result<Event, BallotError> {
    Ok(match event {
        Event::CreateCandidate { name, members } => Event::CreateCandidate {
            name,
            members: members.into_iter().map(fill_start_time).collect::<Result<_, _>>()?,
        },
        Event::AddMember { candidate, member } => {
            Event::AddMember { candidate, member: fill_start_time(member)? }
        }
        other => other,
    })
}

fn fill_start_time(member: Member) -> Result<Member, BallotError> {
    fill_identity(member, proc_tgid, proc_start_time, current_boot_id())
}

/// [`fill_start_time`] with the `/proc` lookups given: `tgid` and
/// `start_time` of a pid (`None`: no such task), and this boot's id.
pub(super) fn fill_identity(
    member: Member,
    tgid: impl Fn(i32) -> Option<i32>,
    start_time: impl Fn(i32) -> Option<u64>,
    this_boot: Option<String>,
) -> Result<Member, BallotError> {
    match member {
        Member::Pid { pid, start_time: given, boot_id } if pid > 0 => {
            // /proc/TID exists for every thread, though /proc lists only
            // processes: a thread id would be taken for a process that is
            // never seen, and dropped as exited.
            match tgid(pid) {
                None => return Err(BallotError::NoSuchProcess(pid)),
                Some(tgid) if tgid != pid => {
                    return Err(BallotError::InvalidMember(format!(
                        "pid {pid} is a thread of process {tgid}; a pid member is a whole \
                         process: add pid {tgid}"
                    )));
                }
                Some(_) => {}
            }
            let live = start_time(pid).ok_or(BallotError::NoSuchProcess(pid))?;
            if given.is_some_and(|t| t != live) || boot_id.is_some() && boot_id != this_boot {
                return Err(BallotError::NoSuchProcess(pid));
            }
            Ok(Member::Pid { pid, start_time: Some(live), boot_id: this_boot })
        }
        // Invalid pids are refused by validation with a better message.
        other => Ok(other),
    }
}
