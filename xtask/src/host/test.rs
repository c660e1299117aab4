//! `cargo xtask test`: every test there is, in one command: the host-side
//! unit tests of the whole workspace, the ballot page in a real browser
//! (`browser-test`), then the VM tests.

use anyhow::{Context, Result};
use clap::Args;
use xshell::{Shell, cmd};

use crate::common::compile;
use crate::host::{browser, vm_test};

#[derive(Args)]
pub struct TestCmd {
    #[command(flatten)]
    vm: vm_test::VmTestCmd,
}

impl TestCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let clang = compile::bpf_clang(sh)?;
        println!("==> unit tests (cargo test --workspace)");
        cmd!(sh, "cargo test --locked --workspace")
            .env("BPF_CLANG", &clang)
            .run()
            .context("unit tests failed")?;
        browser::BrowserTestCmd { chromium: None }.run(sh)?;
        println!("==> VM tests");
        self.vm.run(sh)
    }
}
