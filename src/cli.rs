//! Command-line interface: every flag's doc comment is its `--help`.

use std::ffi::OsString;

use clap::{Args, Parser, Subcommand};

use crate::bpf::BpfConfig;

#[derive(Parser, Debug)]
#[command(
    name = "scx_ballot",
    version,
    about = "A sched_ext CPU scheduler where people vote on which processes get the CPU",
    long_about = "A sched_ext CPU scheduler where people vote on which processes get the CPU.\n\n\
        Without a subcommand it loads the BPF scheduler and runs until Ctrl-C (SIGINT) or \
        SIGTERM, then detaches and prints why the scheduler exited. In partial mode (the \
        default) only SCHED_EXT tasks are scheduled by it: start them with \
        `scx_ballot exec -- CMD`.",
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
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        argv: Vec<OsString>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SchedOpts {
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
}

impl SchedOpts {
    pub fn bpf_config(&self) -> BpfConfig {
        BpfConfig {
            slice_us: self.slice_us,
            partial: true,
            exit_dump_len: self.exit_dump_len,
            debug_no_dispatch: self.debug_no_dispatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("scx_ballot").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_run_the_scheduler_in_partial_mode() {
        let cli = parse(&[]).unwrap();
        assert!(cli.command.is_none());
        let cfg = cli.sched.bpf_config();
        assert!(cfg.partial);
        assert_eq!(cfg.slice_us, 5000);
        assert!(!cfg.debug_no_dispatch);
    }

    #[test]
    fn exec_keeps_the_command_and_its_own_flags() {
        let cli = parse(&["exec", "--", "sh", "-c", "echo --stats"]).unwrap();
        match cli.command {
            Some(Command::Exec { argv }) => assert_eq!(argv, ["sh", "-c", "echo --stats"]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn exec_without_a_command_is_refused() {
        assert!(parse(&["exec"]).is_err());
    }

    #[test]
    fn exec_does_not_mix_with_scheduler_flags() {
        assert!(parse(&["--slice-us", "100", "exec", "--", "true"]).is_err());
    }

    #[test]
    fn slice_out_of_range_is_refused() {
        assert!(parse(&["--slice-us", "0"]).is_err());
        assert!(parse(&["--slice-us", "5000000"]).is_err());
    }
}
