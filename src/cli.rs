//! Command-line interface: every flag's doc comment is its `--help`.

use std::ffi::OsString;

use clap::builder::ArgPredicate;
use clap::{Args, Parser, Subcommand};

use crate::ballot::Counting;
use crate::bpf::InitOpts;
use crate::sched::IdleDispatch;
use crate::election::view::Mode;
use crate::policy::PolicyName;

#[derive(Parser, Debug)]
#[command(
    name = "scx_ballot",
    version,
    about = "A sched_ext CPU scheduler where people vote on which processes get the CPU",
    long_about = "A sched_ext CPU scheduler where people vote on which processes get the CPU.\n\n\
        Without a subcommand it loads the BPF scheduler and runs until Ctrl-C (SIGINT) or \
        SIGTERM, then detaches and prints why the scheduler exited. In partial mode (the \
        default) only SCHED_EXT tasks are scheduled by it: start them with \
        `scx_ballot exec -- CMD`. With --no-sched it runs only the election (the voting \
        server and its ballot page) and loads nothing into the kernel.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub sched: SchedOpts,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run CMD as a SCHED_EXT task (policy 7), so scx_ballot schedules it.
    ///
    /// The policy is inherited by CMD's children. While no sched_ext
    /// scheduler is attached, SCHED_EXT tasks run in the fair class.
    Exec {
        /// Make CMD and its children members of this candidate (the election
        /// policy finds them by the SCX_BALLOT_CANDIDATE variable this sets
        /// in their environment). Any process can set that variable, so the
        /// scheduler honours it only for processes whose real and effective
        /// uids it trusts: its own (root) and those of --member-uid or the
        /// candidate's `uids` in the candidates file.
        #[arg(long, value_name = "NAME")]
        candidate: Option<String>,

        /// The command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        argv: Vec<OsString>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SchedOpts {
    /// The scheduling policy: who runs next, where and for how long
    /// (`election` with --no-sched).
    #[arg(
        long,
        value_enum,
        default_value_t = PolicyName::Vruntime,
        default_value_if("no_sched", ArgPredicate::IsPresent, "election")
    )]
    pub policy: PolicyName,

    /// Dry run: run the election only (the ballot and its journal, the
    /// voting server with the ballot page, the membership tracker and its
    /// CPU shares) without loading the BPF scheduler, until Ctrl-C or
    /// SIGTERM. It needs neither root nor a sched_ext kernel, so the voting
    /// server and page can be tried and tested on any Linux machine. The
    /// trade-off: votes are counted and journaled but move no CPU, since
    /// nothing is scheduled by scx_ballot; the shares shown are what the
    /// kernel's own scheduler gave the candidates' processes. Implies
    /// `--policy election` (any other policy is refused); flags that only
    /// tune scheduling are refused with it.
    #[arg(
        long,
        conflicts_with_all = [
            "full", "slice_max_us", "starvation_ms", "timeout_ms", "debug", "mode", "min_share", "cap",
            "slice_us", "stats", "exit_dump_len", "debug_no_dispatch", "debug_mutant",
        ]
    )]
    pub no_sched: bool,

    /// Schedule every task of the system, not only SCHED_EXT ones. The whole
    /// machine then depends on this process; the BPF side still runs the
    /// scheduler's own threads and kernel helpers directly, and takes over any
    /// task that waits too long, but a bug in a policy is felt everywhere.
    #[arg(long)]
    pub full: bool,

    /// Longest slice a policy may give, in microseconds. Longer slices let a
    /// policy favour throughput; they also delay everyone else by as much.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    pub slice_max_us: u64,

    /// How long a task may wait for the user-space policy before the BPF
    /// side runs it by itself, in milliseconds. Lower keeps tasks safe from a
    /// slow policy; higher leaves the policy more say under load. Must stay
    /// well below the watchdog timeout.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=4000))]
    pub starvation_ms: u64,

    /// The kernel watchdog's timeout in milliseconds: a runnable task left
    /// waiting this long makes the kernel eject the scheduler.
    /// The starvation limit plus the longest slice must stay within half of
    /// it (checked at start). `SCX_TIMEOUT_MS` overrides it.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(TIMEOUT_MS_MIN as i64..=TIMEOUT_MS_MAX as i64))]
    pub timeout_ms: u32,

    /// libbpf debug output while loading.
    #[arg(long)]
    pub debug: bool,

    /// Election: how votes turn into CPU. `winner` gives the leader's tasks
    /// the CPU first and everyone else only `--min-share`; `proportional`
    /// shares the CPU in proportion to votes + 1.
    #[arg(long, value_enum, default_value_t = Mode::Winner, help_heading = "Election")]
    pub mode: Mode,

    /// Election, winner mode: the CPU share (percent) every candidate that
    /// is not leading keeps while it has runnable tasks. Higher is kinder to
    /// the losers and weakens the win; it also bounds how long their tasks
    /// wait (about slice / share).
    #[arg(long, default_value_t = 5.0, value_parser = parse_percent, help_heading = "Election")]
    pub min_share: f64,

    /// Election, winner mode: also hold every class but the leader's to
    /// `--min-share` of the whole machine when a CPU would otherwise idle.
    /// Without it the scheduler is work-conserving: when the candidates have
    /// fewer runnable tasks than there are CPUs, a losing candidate's tasks
    /// take the CPUs the leader cannot use, and a vote shows only once the
    /// machine is full (two single-process candidates on two CPUs each get a
    /// whole CPU, whatever the votes). With it, a vote shows on an idle
    /// machine too (the leader about a CPU, each loser about its minimum),
    /// at the price of idle CPUs: the losers' work takes longer. Their tasks
    /// still run every 200 ms or sooner (shorter slices when there are many),
    /// far from the watchdog. No effect in proportional mode or before the
    /// first vote.
    #[arg(long, help_heading = "Election")]
    pub cap: bool,

    /// Election: candidates to create at start (TOML or JSON, see README);
    /// candidates already in the votes journal are kept as they are.
    #[arg(long, value_name = "FILE", help_heading = "Election")]
    pub candidates: Option<std::path::PathBuf>,

    /// Election: also trust this (numeric) uid's processes to join any
    /// candidate by a `comm` rule or `scx_ballot exec --candidate`
    /// (repeatable). A process picks its own command name and environment,
    /// so by default only processes whose real and effective uids are the
    /// one scx_ballot runs as join that way; `pid` and `cgroup` members,
    /// which the admin names, join whatever their uid. Every uid trusted
    /// lets its user put any of its processes into any candidate (per
    /// candidate: `uids` in the candidates file).
    #[arg(long, value_name = "UID", help_heading = "Election",
        value_parser = clap::value_parser!(u32).range(0..u32::MAX as i64))]
    pub member_uid: Vec<u32>,

    /// Election: where the voting server listens. Anything but a loopback
    /// address exposes it to the network; the admin routes then need a token.
    #[arg(long, default_value = "127.0.0.1:7447", help_heading = "Election")]
    pub listen: std::net::SocketAddr,

    /// Election: the token the admin routes require (`Authorization: Bearer
    /// TOKEN`). Every user can read it in /proc/PID/cmdline: prefer
    /// --admin-token-file or the SCX_BALLOT_ADMIN_TOKEN environment variable.
    /// Without a token, a loopback-only server leaves the admin routes open
    /// (to local clients: pages of other sites are refused) and any other
    /// listener gets a generated token, printed at start.
    #[arg(long, value_name = "TOKEN", help_heading = "Election",
        conflicts_with = "admin_token_file")]
    pub admin_token: Option<String>,

    /// Election: read the admin token from FILE (its first line), so that it
    /// is not on the command line. Keep the file readable by its owner only.
    #[arg(long, value_name = "FILE", help_heading = "Election")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Election: a host name the voting server answers for besides IP
    /// addresses and localhost (repeatable), e.g. the name the room's phones
    /// open. Requests naming any other host are refused (DNS rebinding).
    #[arg(long = "allow-host", value_name = "NAME", help_heading = "Election")]
    pub allow_hosts: Vec<String>,

    /// Election: the least time between two votes of the same voter, and
    /// between two votes from the same client address (an IPv6 client by
    /// its /64), in milliseconds (0: no limit). Cheap protection against a
    /// voter script, even one that changes its voter id at every vote.
    /// Phones behind one NAT address share its allowance: use it where
    /// voters reach the server on a LAN, or put a proxy in front and see
    /// --trust-forwarded-for.
    #[arg(long, default_value_t = 0, help_heading = "Election")]
    pub vote_interval_ms: u64,

    /// Election: how votes count. `one-per-voter` (the default): each voter
    /// id holds one current vote, a new vote moves it, and a candidate's
    /// count is its voters, as in a room where everyone votes once and may
    /// change their mind (at most 100,000 voters). `cumulative`: every
    /// accepted vote adds one (for scripted loads and applause-style
    /// events; pair it with --vote-interval-ms). The journal keeps every
    /// vote with its voter, so it replays under either.
    #[arg(long, value_enum, default_value_t = Counting::OnePerVoter, help_heading = "Election")]
    pub counting: Counting,

    /// Election: take a voter's address for --vote-interval-ms from the
    /// last X-Forwarded-For entry (what a reverse proxy in front of
    /// scx_ballot saw), not from the connection. Only behind such a proxy:
    /// without one, any client can name any address.
    #[arg(long, help_heading = "Election")]
    pub trust_forwarded_for: bool,

    /// Election: the votes journal. Every acknowledged change is appended
    /// and synced to disk before the answer, and replayed at start; without
    /// it, votes live only as long as the process. A file that is not a
    /// journal, a symbolic link, or a journal another scx_ballot holds is
    /// refused and left as it is.
    #[arg(long, value_name = "FILE", help_heading = "Election")]
    pub votes_file: Option<std::path::PathBuf>,

    /// Time slice of every dispatched task, in microseconds. Longer slices
    /// mean fewer scheduling decisions (cheaper, better throughput); shorter
    /// ones mean quicker turns between tasks (better latency).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    pub slice_us: u64,

    /// Print the scheduler's counters every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub stats: Option<f64>,

    /// Bytes of the kernel's debug dump kept when the scheduler exits with an
    /// error (0: the kernel default). Larger dumps explain more and cost memory.
    #[arg(long, default_value_t = 0)]
    pub exit_dump_len: u32,

    /// More log output.
    #[arg(short, long)]
    pub verbose: bool,

    /// Testing aid: queue SCHED_EXT tasks but never dispatch them. Those tasks
    /// get no CPU until the kernel's watchdog ejects the scheduler; the VM
    /// tests use it to prove that such a broken scheduler is caught.
    #[arg(long, hide = true)]
    pub debug_no_dispatch: bool,

    /// Testing aid, with `--policy election`: run the election (server,
    /// ballot, membership) but break the policy on purpose, so the VM
    /// scenarios can prove their snapshots catch it. `fifo` schedules with
    /// the fifo policy; `ignore-votes` keeps the election policy but treats
    /// every candidate as having no votes.
    #[arg(long, value_enum, hide = true, value_name = "MUTANT")]
    pub debug_mutant: Option<Mutant>,
}

/// A deliberately broken election policy (`--debug-mutant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mutant {
    /// The fifo policy instead of the election.
    Fifo,
    /// The election policy, blind to votes.
    IgnoreVotes,
}

/// The watchdog timeouts scx_ballot accepts, in milliseconds.
pub const TIMEOUT_MS_MIN: u32 = 1000;
pub const TIMEOUT_MS_MAX: u32 = 30_000;
/// How often the BPF side looks for a task left waiting (its heartbeat).
const HEARTBEAT_MS: u64 = 50;

/// `SCX_TIMEOUT_MS`'s value, if it is a timeout scx_ballot can honour.
fn timeout_from_env(raw: &str) -> anyhow::Result<u32> {
    match raw.trim().parse::<u32>() {
        Ok(ms) if (TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&ms) => Ok(ms),
        _ => anyhow::bail!(
            "SCX_TIMEOUT_MS={raw:?} is not a watchdog timeout this scheduler can honour \
             ({TIMEOUT_MS_MIN} to {TIMEOUT_MS_MAX} ms)"
        ),
    }
}

/// The environment variable an admin token may come from.
pub const ADMIN_TOKEN_ENV: &str = "SCX_BALLOT_ADMIN_TOKEN";

impl SchedOpts {
    /// The admin token given: `--admin-token`, else `--admin-token-file`'s
    /// first line, else `$SCX_BALLOT_ADMIN_TOKEN`; `None` if none is.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.admin_token {
            log::warn!(
                "--admin-token is visible to every user of this machine in /proc; \
                 prefer --admin-token-file or ${ADMIN_TOKEN_ENV}"
            );
            return Ok(Some(token.clone()));
        }
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("reading the admin token file {}: {e}", path.display())
            })?;
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            if token.is_empty() {
                anyhow::bail!("the admin token file {} is empty", path.display());
            }
            return Ok(Some(token));
        }
        Ok(std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.is_empty()))
    }

    /// The watchdog timeout in force: `$SCX_TIMEOUT_MS` when set (it must
    /// be a number of milliseconds in the flag's range), else `--timeout-ms`.
    pub fn timeout_ms(&self) -> anyhow::Result<u32> {
        match std::env::var("SCX_TIMEOUT_MS") {
            Ok(raw) => timeout_from_env(&raw),
            Err(_) => Ok(self.timeout_ms),
        }
    }

    /// Refuses flag combinations under which the kernel's watchdog would
    /// eject the scheduler by design: a task left to the BPF side's rescue
    /// waits up to the starvation limit, the heartbeat that notices it, and
    /// a CPU's current slice, and all of that must fit in half the watchdog
    /// timeout (the other half is margin for a loaded machine).
    pub fn check_timing(&self) -> anyhow::Result<()> {
        let timeout = u64::from(self.timeout_ms()?);
        let slice_max_ms = self.slice_max_us.max(self.slice_us).div_ceil(1000);
        let worst = self.starvation_ms + HEARTBEAT_MS + slice_max_ms;
        if worst > timeout / 2 {
            anyhow::bail!(
                "--starvation-ms {} + the {HEARTBEAT_MS} ms heartbeat + the longest slice ({slice_max_ms} ms) \
                 is {worst} ms, more than half the {timeout} ms watchdog timeout: a task the policy \
                 leaves waiting would get the scheduler ejected; lower --starvation-ms or \
                 --slice-max-us/--slice-us, or raise --timeout-ms",
                self.starvation_ms
            );
        }
        Ok(())
    }

    pub fn init_opts(&self, idle_dispatch: IdleDispatch) -> InitOpts {
        InitOpts {
            partial: !self.full,
            slice_ns: self.slice_us * 1000,
            slice_max_ns: self.slice_max_us.max(self.slice_us) * 1000,
            starvation_ms: self.starvation_ms,
            timeout_ms: self.timeout_ms().unwrap_or(self.timeout_ms),
            exit_dump_len: self.exit_dump_len,
            idle_dispatch,
            name: "scx_ballot".to_string(),
            // In full mode every task waits for this process: a page fault
            // that needs reclaim or I/O could stall the machine.
            lock_memory: self.full,
            // The scheduling loop stays in the fair class in partial mode:
            // it sleeps in the kernel between rounds, so nothing is gained.
            sched_ext_self: false,
            debug: self.debug,
            debug_no_dispatch: self.debug_no_dispatch,
        }
    }
}

/// A percentage in (0, 50], as a fraction.
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v > 0.0 && v <= 50.0 {
        Ok(v / 100.0)
    } else {
        Err(format!("{v} is not in (0, 50]"))
    }
}

#[cfg(test)]
mod tests;
