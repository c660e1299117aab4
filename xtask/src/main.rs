//! Developer tasks for scx_ballot: `cargo xtask <command>`.
//!
//! `main` only dispatches; each command lives in its own module. The xtask
//! never links the BPF skeleton: it drives the `scx_ballot` binary as a
//! process, the way a user would.
//!
//! Where things are:
//!
//! - `host/`: the commands run on the developer's machine (or in CI):
//!   `test`, `vm-test` and its suites, `run`, `bench`, `soak`,
//!   `vm-boot-soak`, `browser-test`, `kernel`, `deps`;
//! - `guest/`: what runs next to the scheduler, in the VM or on a sched_ext
//!   host: the bench's workloads, the live demo, and what they share;
//! - `scenario/`: the scenario suite, both sides of it: the files, the
//!   in-VM runner, and the judge and its snapshots;
//! - `vote_load/`: the voting server's load generator, a command of its own
//!   and a library for the bench;
//! - `common/`: what both sides use: booting a VM and scanning its console
//!   (`vm/`, with `vm-check`), the HTTP client, building the scheduler,
//!   process groups;
//! - `tidy.rs`: checks on the workspace's sources (tests only).

mod common;
mod guest;
mod host;
mod scenario;
#[cfg(test)]
mod tidy;
mod vote_load;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use xshell::Shell;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test scx_ballot"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every test: the workspace's unit tests, the browser test, then
    /// the VM tests.
    Test(host::test::TestCmd),
    /// Boot a sched_ext kernel in a VM and check, in it, who got the CPU.
    VmTest(host::vm_test::VmTestCmd),
    /// A live election: scx_ballot with the election policy, its voting
    /// server and demo candidates, on this host if its kernel has sched_ext,
    /// otherwise in the VM (port forwarded); Ctrl-C stops it.
    Run(host::run::RunCmd),
    /// Obtain the VM kernel (or check one) against kernel-config/.
    Kernel(host::kernel::KernelCmd),
    /// Install the host packages and tools for building and VM tests.
    Deps(host::deps::DepsCmd),
    /// Boot the VM once with a tiny guest command (no scheduler).
    VmCheck(common::vm::VmCheckCmd),
    /// Rounds of stress-ng (cpu, vm, fork, exec, switch, affinity) for every
    /// policy in partial and full mode, the election under a vote storm, the
    /// scheduler SIGKILLed in every third round; ejections, shell latency
    /// and lost votes per policy and mode (target/soak/).
    Soak(host::soak::SoakCmd),
    /// Boot the VM many times with a trivial command and count the boots
    /// that wedge, per set of extra kernel boot options.
    VmBootSoak(host::boot_soak::BootSoakCmd),
    /// Check the ballot page in headless Chromium against
    /// `scx_ballot --no-sched`; saves target/browser-test/ballot.png.
    BrowserTest(host::browser::BrowserTestCmd),
    /// (In the VM) run the scenarios of a plan; used by `vm-test`.
    #[command(hide = true)]
    GuestScenarios(scenario::guest::GuestScenariosCmd),
    /// Scheduling cost and vote latency of each configuration, side by side,
    /// in one VM run (target/bench/).
    Bench(host::bench::BenchCmd),
    /// Judge scenario runs already recorded (no VM) and write their A/B table
    /// and report page, as `vm-test scenarios` does: `rejudge DIR --runs N`.
    #[command(hide = true)]
    Rejudge(scenario::rejudge::RejudgeCmd),
    /// Votes/s against a running voting server (e.g. `scx_ballot --no-sched`),
    /// with viewers beside the voters if asked.
    ///
    /// Voters (--connections) post votes as fast as answers come back: one
    /// line per count with votes/s and the p50/p99 time of a vote. Viewers
    /// (--viewers, --view) behave like open ballot pages, polling `GET /votes`
    /// once a second or reading the `GET /events` stream: one more line with
    /// how many were held, refused (why) and late (not answered within 1 s;
    /// a stream: no event for 2 s), and their answer times or event gaps.
    #[command(hide = true)]
    VoteLoad(vote_load::VoteLoadCmd),
    /// (In the VM) the bench's workloads; used by `bench`.
    #[command(hide = true)]
    GuestBench(guest::bench::GuestBenchCmd),
    /// (In the VM) a scenario workload process; used by `guest-scenarios`.
    #[command(hide = true)]
    GuestWorker(scenario::guest::GuestWorkerCmd),
    /// (On a sched_ext host or in the VM) the live election; used by `run`.
    #[command(hide = true)]
    Demo(guest::demo::DemoCmd),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The guest commands run inside the VM: no project shell, no cwd change.
    match cli.cmd {
        Cmd::GuestScenarios(cmd) => return cmd.run(),
        Cmd::GuestWorker(cmd) => return cmd.run(),
        Cmd::Demo(cmd) => return cmd.run(),
        Cmd::GuestBench(cmd) => return cmd.run(),
        Cmd::Rejudge(cmd) => return cmd.run(),
        Cmd::VoteLoad(cmd) => return cmd.run(),
        _ => {}
    }
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match cli.cmd {
        Cmd::Test(cmd) => cmd.run(&sh),
        Cmd::VmTest(cmd) => cmd.run(&sh),
        Cmd::Run(cmd) => cmd.run(&sh),
        Cmd::Kernel(cmd) => cmd.run(&sh),
        Cmd::Deps(cmd) => cmd.run(&sh),
        Cmd::VmCheck(cmd) => cmd.run(&sh),
        Cmd::VmBootSoak(cmd) => cmd.run(&sh),
        Cmd::Soak(cmd) => cmd.run(&sh),
        Cmd::Bench(cmd) => cmd.run(&sh),
        Cmd::BrowserTest(cmd) => cmd.run(&sh),
        Cmd::GuestScenarios(_)
        | Cmd::GuestWorker(_)
        | Cmd::Demo(_)
        | Cmd::GuestBench(_)
        | Cmd::Rejudge(_)
        | Cmd::VoteLoad(_) => unreachable!("handled above"),
    }
}

/// The workspace root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Where the xtask keeps what it downloads and installs: `target/xtask/`,
/// or `$SCX_BALLOT_CACHE` when set.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SCX_BALLOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target").join("xtask"))
}
