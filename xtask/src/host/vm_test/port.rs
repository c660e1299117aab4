//! The port check: scx_rlfifo as published on crates.io, ported to this
//! crate by exactly what `docs/writing-a-policy.md` tells a user to do, then
//! run in the VM (`vm/port.sh`) next to the project's own policies.
//!
//! On the host, in steps that a failure names: `fetch` (the published
//! `.crate`, through `cargo fetch`; nothing of it is committed here),
//! `unpack`, `apply the guide` (the diff block under "Porting scx_rlfifo" in
//! the guide, applied as it stands, and the files the guide says to delete),
//! `build` (against this checkout, as `../scx_ballot`). In the guest: it
//! attaches, stress-ng runs to its end without an ejection, two equal
//! burners get CPU time within [`MIN_EQUAL_RATIO`] of each other, and
//! SIGINT ends it with exit status 0 and its exit report (`EXIT: ...`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::host::vm_test::facts::{CaseFacts, Verdict};
use crate::{cache_dir, project_root};

/// The scheduler ported, as published.
pub const CRATE: &str = "scx_rlfifo";
pub const VERSION: &str = "1.1.4";

/// The guide and the heading its diff is under.
const GUIDE: &str = "docs/writing-a-policy.md";
const HEADING: &str = "### Porting scx_rlfifo";

/// The files the guide says to delete (its build glue and generated code).
pub const DELETED: [&str; 4] = ["build.rs", "src/bpf_skel.rs", "src/bpf_intf.rs", ".gitignore"];

/// Equal burners: the least-served gets at least this fraction of the
/// best-served one's CPU time.
pub const MIN_EQUAL_RATIO: f64 = 0.6;

/// Runs `what`, naming the step when it fails.
fn step<T>(name: &str, what: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("    port check, step `{name}`");
    what().with_context(|| format!("port check: step `{name}` failed"))
}

/// Fetches, ports and builds scx_rlfifo; returns its binary.
pub fn build(sh: &Shell, clang: &str) -> Result<PathBuf> {
    println!("==> port check: {CRATE} {VERSION} from crates.io, ported by {GUIDE}");
    let root = work_dir();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let archive = step("fetch", || fetch(sh, &root))?;
    let dir = root.join(format!("{CRATE}-{VERSION}"));
    step("unpack", || unpack(sh, &archive, &root, &dir))?;
    step("apply the guide", || apply_guide(sh, &root, &dir))?;
    step("build", || {
        // The same release profile as this workspace's, so that the
        // dependencies both builds share are compiled once.
        let _dir = sh.push_dir(&dir);
        cmd!(sh, "cargo build --release")
            .env("BPF_CLANG", clang)
            .env("CARGO_TARGET_DIR", project_root().join("target"))
            .env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only")
            .run()?;
        Ok(())
    })?;
    Ok(project_root().join("target/release").join(CRATE))
}

/// Where the port is made: outside this checkout, since cargo would take
/// a crate inside it for a stray member of this workspace; one folder per
/// checkout.
fn work_dir() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    cache_dir().hash(&mut hash);
    std::env::temp_dir().join(format!("scx_ballot-port-{:016x}", hash.finish()))
}

/// The published `.crate`, downloaded by `cargo fetch` for a manifest that
/// names it (as any dependency is).
fn fetch(sh: &Shell, root: &Path) -> Result<PathBuf> {
    let manifest_dir = root.join("fetch");
    std::fs::create_dir_all(manifest_dir.join("src"))?;
    std::fs::write(
        manifest_dir.join("Cargo.toml"),
        format!(
            "# Written by `cargo xtask`: only there for `cargo fetch` to download {CRATE}.\n\
             [package]\nname = \"port-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\n{CRATE} = \"={VERSION}\"\n\n[workspace]\n"
        ),
    )?;
    std::fs::write(manifest_dir.join("src/lib.rs"), "")?;
    let _dir = sh.push_dir(&manifest_dir);
    cmd!(sh, "cargo fetch --quiet").run().context("cargo fetch")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let caches = cargo_home.join("registry/cache");
    let name = format!("{CRATE}-{VERSION}.crate");
    for registry in std::fs::read_dir(&caches).with_context(|| format!("reading {}", caches.display()))? {
        let candidate = registry?.path().join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("cargo fetch succeeded but {name} is not in {}", caches.display())
}

/// A fresh copy of the published source at `dir`, and `../scx_ballot` next
/// to it pointing at this checkout, as the guide assumes.
fn unpack(sh: &Shell, archive: &Path, root: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    cmd!(sh, "tar -xzf {archive} -C {root}").run()?;
    if !dir.join("Cargo.toml").is_file() {
        bail!("{} did not unpack into {}", archive.display(), dir.display());
    }
    let link = root.join("scx_ballot");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(project_root(), &link).with_context(|| format!("linking {}", link.display()))?;
    Ok(())
}

/// The guide's diff, applied as it stands, and its deletions.
fn apply_guide(sh: &Shell, root: &Path, dir: &Path) -> Result<()> {
    let guide = std::fs::read_to_string(project_root().join(GUIDE)).with_context(|| format!("reading {GUIDE}"))?;
    let diff = guide_diff(&guide)?;
    for file in DELETED {
        if !guide.contains(&format!("`{file}`")) {
            bail!("{GUIDE} no longer says to delete `{file}`: update port.rs's DELETED with the guide");
        }
    }
    let patch = root.join("guide.diff");
    std::fs::write(&patch, diff)?;
    let _dir = sh.push_dir(dir);
    // Outside any git repository (the cache may sit inside this checkout),
    // `git apply` patches the files as `patch` would.
    cmd!(sh, "git apply --verbose {patch}")
        .env("GIT_CEILING_DIRECTORIES", root)
        .run()
        .with_context(|| format!("the diff in {GUIDE} does not apply to the published {CRATE} {VERSION}"))?;
    for file in DELETED {
        let path = dir.join(file);
        std::fs::remove_file(&path).with_context(|| format!("deleting {} as the guide says", path.display()))?;
    }
    Ok(())
}

/// The first ```diff block after the port heading.
fn guide_diff(guide: &str) -> Result<String> {
    let after = guide.split_once(HEADING).with_context(|| format!("{GUIDE} has no heading {HEADING:?}"))?.1;
    let body = after.split_once("```diff\n").with_context(|| format!("{GUIDE}: no ```diff block under {HEADING:?}"))?.1;
    let block = body.split_once("\n```").with_context(|| format!("{GUIDE}: the diff block is not closed"))?.0;
    Ok(format!("{block}\n"))
}

/// The port's guest checks, each with its problems (none: passed).
pub fn judge(dir: &Path) -> Vec<(&'static str, Vec<String>)> {
    judge_facts(&CaseFacts::read(dir))
}

fn judge_facts(f: &CaseFacts) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    if f.get("state_after_load").is_none() {
        out.push(("port: the guest ran the ported scheduler", vec!["nothing recorded (did the guest run port.sh?)".into()]));
        return out;
    }
    let mut v = Verdict::new(f);
    v.expect("state_after_load", "enabled", "the ported scheduler did not attach");
    out.push(("port: the ported scx_rlfifo attaches", v.problems));

    let mut v = Verdict::new(f);
    v.expect("stress_exit", "0", "stress-ng did not complete")
        .expect("state_after_stress", "enabled", "the ported scheduler did not stay attached (ejected?)");
    out.push(("port: a stress run without ejection", v.problems));

    let mut v = Verdict::new(f);
    let shares: Vec<i64> = (0..).map_while(|i| f.num(&format!("burner{i}_permille"))).collect();
    match (shares.iter().min(), shares.iter().max()) {
        (Some(&min), Some(&max)) if shares.len() >= 2 && min as f64 >= MIN_EQUAL_RATIO * max as f64 => {}
        _ => {
            v.fail(format!(
                "equal burners got unequal CPU time (per mille of their total): {shares:?}, least under {MIN_EQUAL_RATIO} of most"
            ));
        }
    }
    v.expect("state_after_window", "enabled", "the ported scheduler did not stay attached");
    // Two burners on at least two CPUs: together at least one CPU's worth.
    let window = f.num("window_ns").unwrap_or(i64::MAX);
    v.expect_in("burners_cpu_ns", window..=i64::MAX, "the burners together got less than one CPU over the window");
    out.push(("port: equal burners within 60% of each other", v.problems));

    let mut v = Verdict::new(f);
    v.expect("scheduler_exit", "0", "the ported scheduler did not exit with 0 on SIGINT")
        .expect("state_after_unload", "disabled", "the ported scheduler did not unload");
    if !f.get("exit_report").is_some_and(|r| r.starts_with("EXIT: ")) {
        v.fail("no exit report (a line `EXIT: ...`) in its output".into());
    }
    out.push(("port: clean exit with its exit report", v.problems));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guide_has_the_diff_and_the_deletions() {
        let guide = std::fs::read_to_string(project_root().join(GUIDE)).unwrap();
        let diff = guide_diff(&guide).unwrap();
        assert!(diff.starts_with("--- a/Cargo.toml\n"), "{diff}");
        assert!(diff.contains("+use scx_ballot::bpf::*;"));
        for file in DELETED {
            assert!(guide.contains(&format!("`{file}`")), "{file}");
        }
    }

    fn facts(text: &str) -> CaseFacts {
        CaseFacts::parse(text)
    }

    const GOOD: &str = "state_after_load=enabled\nops=rlfifo\nstress_exit=0\nstate_after_stress=enabled\n\
        window_ns=8000000000\nburners_cpu_ns=15000000000\nburner0_permille=480\nburner1_permille=520\nstate_after_window=enabled\nscheduler_exit=0\n\
        state_after_unload=disabled\nexit_report=EXIT: unregistered from user space\n";

    fn judged(text: &str) -> Vec<(&'static str, Vec<String>)> {
        judge_facts(&facts(text))
    }

    #[test]
    fn a_good_run_passes_every_check() {
        assert!(facts(GOOD).get("ops").is_some());
        let out = judged(GOOD);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|(_, p)| p.is_empty()), "{out:?}");
    }

    #[test]
    fn each_failure_is_caught_by_its_check() {
        let cases = [
            ("state_after_stress=enabled", "state_after_stress=disabled", 1),
            ("burner0_permille=480", "burner0_permille=300", 2),
            ("burners_cpu_ns=15000000000", "burners_cpu_ns=0", 2),
            ("exit_report=EXIT: unregistered from user space", "exit_report=", 3),
            ("scheduler_exit=0", "scheduler_exit=1", 3),
            ("state_after_load=enabled", "state_after_load=disabled", 0),
        ];
        for (from, to, check) in cases {
            let out = judged(&GOOD.replace(from, to));
            assert!(!out[check].1.is_empty(), "{to}: {out:?}");
        }
        assert!(!judged("")[0].1.is_empty());
    }
}
