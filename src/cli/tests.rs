//! The command line's tests.

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("scx_ballot").chain(args.iter().copied()))
}

#[test]
fn the_admin_token_comes_from_a_file_and_never_needs_the_command_line() {
    let dir = std::env::temp_dir().join(format!("scx_ballot-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "s3cret\nignored\n").unwrap();
    let f = file.to_str().unwrap();
    let cli = parse(&["--admin-token-file", f]).unwrap();
    assert_eq!(cli.sched.admin_token().unwrap().as_deref(), Some("s3cret"));
    assert!(parse(&["--admin-token-file", f, "--admin-token", "x"]).is_err(), "one or other");
    std::fs::write(&file, "\n").unwrap();
    let err = parse(&["--admin-token-file", f]).unwrap().sched.admin_token().unwrap_err();
    assert!(err.to_string().contains("is empty"), "{err}");
    let missing = dir.join("missing");
    let cli = parse(&["--admin-token-file", missing.to_str().unwrap()]).unwrap();
    assert!(cli.sched.admin_token().unwrap_err().to_string().contains("reading the admin token"));
    assert_eq!(parse(&["--admin-token", "t"]).unwrap().sched.admin_token().unwrap().as_deref(), Some("t"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timings_that_guarantee_an_ejection_are_refused_with_the_reason() {
    let check = |args: &[&str]| parse(args).unwrap().sched.check_timing();
    check(&[]).expect("the defaults are safe");
    check(&["--timeout-ms", "1000", "--starvation-ms", "100"]).expect("a short, safe set");
    let err = check(&["--timeout-ms", "1000", "--starvation-ms", "4000", "--slice-us", "1000000"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("ejected") && err.contains("--starvation-ms 4000"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(check(&["--timeout-ms", "1000"]).is_err(), "starvation 1000 = the timeout");
    assert!(check(&["--slice-max-us", "1000000", "--timeout-ms", "2000"]).is_err());
    for bad in ["50", "0", "999", "30001", "soon", ""] {
        let err = timeout_from_env(bad).unwrap_err().to_string();
        assert!(err.contains("SCX_TIMEOUT_MS"), "{bad}: {err}");
    }
    assert_eq!(timeout_from_env("30000").unwrap(), 30_000);
}

#[test]
fn defaults_run_the_scheduler_in_partial_mode() {
    let cli = parse(&[]).unwrap();
    assert!(cli.command.is_none());
    let cfg = cli.sched.init_opts(IdleDispatch::Always);
    assert!(cfg.partial);
    assert_eq!(cli.sched.policy, PolicyName::Vruntime);
    assert_eq!(cfg.slice_ns, 5_000_000);
    assert!(!cfg.debug_no_dispatch);
}

#[test]
fn exec_keeps_the_command_and_its_own_flags() {
    let cli = parse(&["exec", "--", "sh", "-c", "echo --stats"]).unwrap();
    match cli.command {
        Some(Command::Exec {
            argv,
            candidate: None,
        }) => {
            assert_eq!(argv, ["sh", "-c", "echo --stats"])
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn exec_can_name_a_candidate() {
    let cli = parse(&["exec", "--candidate", "blue", "--", "burn"]).unwrap();
    assert!(
        matches!(cli.command, Some(Command::Exec { candidate: Some(c), .. }) if c == "blue")
    );
}

#[test]
fn election_flags() {
    let cli = parse(&[
        "--policy",
        "election",
        "--mode",
        "proportional",
        "--min-share",
        "10",
    ])
    .unwrap();
    assert_eq!(cli.sched.mode, Mode::Proportional);
    assert!((cli.sched.min_share - 0.10).abs() < 1e-9);
    assert!(parse(&["--min-share", "0"]).is_err());
    assert!(parse(&["--min-share", "80"]).is_err());
    assert!(parse(&["--listen", "not-an-address"]).is_err());
}

#[test]
fn no_sched_implies_the_election_and_refuses_scheduling_flags() {
    let cli = parse(&["--no-sched", "--listen", "127.0.0.1:0"]).unwrap();
    assert!(cli.sched.no_sched);
    assert_eq!(cli.sched.policy, PolicyName::Election);
    assert_eq!(cli.sched.listen.port(), 0);
    let cli = parse(&[
        "--no-sched",
        "--policy",
        "election",
        "--vote-interval-ms",
        "60000",
    ])
    .unwrap();
    assert_eq!(
        (cli.sched.policy, cli.sched.vote_interval_ms),
        (PolicyName::Election, 60000)
    );
    // Parsed as asked, refused by main with a reason.
    let fifo = parse(&["--no-sched", "--policy", "fifo"]).unwrap();
    assert_eq!(fifo.sched.policy, PolicyName::Fifo);
    assert_eq!(
        parse(&[]).unwrap().sched.policy,
        PolicyName::Vruntime,
        "the default stays"
    );
    let scheduling_only: [&[&str]; 4] = [
        &["--full"],
        &["--slice-us", "100"],
        &["--mode", "proportional"],
        &["--stats", "1"],
    ];
    for flag in scheduling_only {
        let args: Vec<&str> = std::iter::once("--no-sched")
            .chain(flag.iter().copied())
            .collect();
        let err = parse(&args).expect_err(&format!("{flag:?}"));
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{flag:?}"
        );
    }
}

#[test]
fn member_uids_are_numbers_and_repeat() {
    let cli = parse(&["--member-uid", "1000", "--member-uid", "0"]).unwrap();
    assert_eq!(cli.sched.member_uid, [1000, 0]);
    assert!(parse(&[]).unwrap().sched.member_uid.is_empty());
    let cli = parse(&["--no-sched", "--member-uid", "65534"]).unwrap();
    assert_eq!(cli.sched.member_uid, [65534]);
    for bad in ["alice", "-1", "4294967295"] {
        assert!(parse(&["--member-uid", bad]).is_err(), "{bad}");
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
fn full_mode_and_policy_are_chosen_by_flags() {
    let cli = parse(&["--full", "--policy", "fifo"]).unwrap();
    assert!(!cli.sched.init_opts(IdleDispatch::Always).partial);
    assert_eq!(cli.sched.policy, PolicyName::Fifo);
    assert!(parse(&["--policy", "lottery"]).is_err());
}

#[test]
fn slice_out_of_range_is_refused() {
    assert!(parse(&["--slice-us", "0"]).is_err());
    assert!(parse(&["--slice-us", "5000000"]).is_err());
}
