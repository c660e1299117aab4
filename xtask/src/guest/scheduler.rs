//! What the commands that run next to the scheduler share (the scenario
//! runner and the bench inside the VM, the live demo there or on a sched_ext
//! host): the sched_ext state, starting a scheduler and waiting until it is
//! attached, stopping it, and a request to its voting server (through
//! [`crate::common::http`]).

use scx_ballot_api::Tally;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::common::http;

const STATE: &str = "/sys/kernel/sched_ext/state";

/// `/sys/kernel/sched_ext/state`, or `absent`.
pub fn state() -> String {
    std::fs::read_to_string(STATE).map(|s| s.trim().to_string()).unwrap_or_else(|_| "absent".into())
}

/// Waits until the sched_ext state is `want`; false after `within`.
pub fn wait_state(want: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while state() != want {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

pub fn online_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The running kernel's release.
pub fn uname_r() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `bin`, bounded in time: `timeout` stops it with SIGINT (and SIGKILL
/// [`KILL_AFTER_SECS`] later) after `secs`, and forwards our SIGINT to it.
pub fn bounded(bin: &Path, secs: u64) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--foreground", "--preserve-status", "-s", "INT", "-k", &KILL_AFTER_SECS.to_string(), &secs.to_string()])
        .arg(bin);
    cmd
}

/// How long a scheduler may take to exit after SIGINT before `timeout`
/// kills it: under [`Scheduler::stop`]'s 30 s, so a hung one is still
/// reported, but well over the 10 s that scx_rustland 1.1.4 once needed
/// under TCG after it had already detached (the bench counted that run as
/// failed, exit status 137).
pub const KILL_AFTER_SECS: u64 = 25;

/// A scheduler process we started.
pub struct Scheduler {
    pub child: Child,
}

/// utime + stime, in clock ticks (USER_HZ, 100), of a `/proc/.../stat`
/// line: its 14th and 15th fields, counted after the command's closing
/// parenthesis (a command may hold spaces and parentheses).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

impl Scheduler {
    /// The scheduler's own pid: the child of `timeout` when [`bounded`]
    /// wraps it, else the process started.
    pub fn pid(&self) -> u32 {
        let wrapper = self.child.id();
        std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
            .unwrap_or(wrapper)
    }

    /// Runs `cmd` with its output in `log`, and waits until sched_ext is
    /// enabled: at most `attach`, or until `interrupted` is raised.
    pub fn start(mut cmd: Command, log: &Path, attach: Duration, interrupted: Option<&AtomicBool>) -> Result<Scheduler> {
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting the scheduler")?;
        let mut sched = Scheduler { child };
        let deadline = Instant::now() + attach;
        while state() != "enabled" {
            if let Some(status) = sched.child.try_wait()? {
                bail!("the scheduler exited while starting ({status}); see {}", log.display());
            }
            if Instant::now() > deadline || interrupted.is_some_and(|f| f.load(Ordering::Relaxed)) {
                sched.stop();
                bail!("the scheduler did not attach within {} s (sched_ext state {})", attach.as_secs(), state());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sched)
    }

    /// SIGINT, then up to 30 s for it to exit, then SIGKILL. Its exit
    /// status, or None when it had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }
}

/// Waits up to `within` for the voting server at `addr` to answer.
pub fn wait_api(addr: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match api::<Tally>(addr, "GET", "/votes", None) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("the voting server does not answer on {addr}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One request to the voting server at `addr`; the body of a 2xx answer,
/// read as the API's type for it (`scx_ballot_api`), so a field the server
/// renamed fails here, named.
pub fn api<T: serde::de::DeserializeOwned>(addr: &str, method: &str, path: &str, body: Option<&str>) -> Result<T> {
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("{addr} is not an address"))?;
    let body = body.unwrap_or("");
    let headers = format!("Content-Length: {}\r\n", body.len());
    let answer = http::send(sock, method, path, &headers, body, Duration::from_secs(10))?;
    let status: u16 = answer.status().context("an HTTP answer without a status")?;
    let payload = &answer.body;
    if !(200..300).contains(&status) {
        bail!("{method} {path}: HTTP {status}: {payload}");
    }
    serde_json::from_str(payload)
        .with_context(|| format!("{method} {path}: the answer is not the API's {}: {payload}", std::any::type_name::<T>()))
}

/// libbpf fills a BPF program's `CONFIG_*` externs from
/// `/boot/config-$(uname -r)` or `/proc/config.gz`. In the VM `/boot` is the
/// host's (read-only, without the booted kernel's config), so a scheduler
/// that uses them (scx_lavd, scx_bpfland) fails to load with EINVAL: this
/// mounts a small tmpfs on the guest's `/boot` holding that config.
pub fn provide_kconfig(config: Option<&Path>, say: &dyn Fn(&str)) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let want = std::path::PathBuf::from(format!("/boot/config-{}", release.trim()));
    if want.exists() || Path::new("/proc/config.gz").exists() {
        return;
    }
    let Some(config) = config else {
        say("no config of the booted kernel is known: a scheduler whose BPF reads CONFIG_* values will fail to load");
        return;
    };
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "scx-boot", "/boot"]).status();
    match mounted.map_err(anyhow::Error::from).and_then(|st| {
        anyhow::ensure!(st.success(), "mount exited with {st}");
        std::fs::copy(config, &want)?;
        Ok(())
    }) {
        Ok(()) => say(&format!("{} holds the booted kernel's config (for libbpf's CONFIG_* externs)", want.display())),
        Err(e) => say(&format!("could not provide {} ({e:#}): a scheduler whose BPF reads CONFIG_* values will fail to load", want.display())),
    }
}
