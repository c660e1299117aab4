//! Workload groups with a `cgroup_weight`: each `[[group]]` in a cgroup v2
//! of its own under /sys/fs/cgroup, with that `cpu.weight`, removed after
//! the run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::scenario::spec::Group;

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroups of one run, by `[[group]]` name.
#[derive(Default)]
pub(super) struct Cgroups {
    dirs: Vec<(String, PathBuf)>,
}

/// A `[[group]]`'s name: the part of its id before the worker kind.
fn owner(group: &Group) -> &str {
    group.id.split('/').next().unwrap_or("")
}

impl Cgroups {
    /// Creates a cgroup per `[[group]]` that has a weight (none when no
    /// group has one), mounting cgroup2 and enabling the cpu controller
    /// where the guest has not.
    pub(super) fn create(groups: &[Group]) -> Result<Cgroups> {
        let mut out = Cgroups::default();
        let weighted: Vec<&Group> = groups.iter().filter(|g| g.cgroup_weight.is_some()).collect();
        if weighted.is_empty() {
            return Ok(out);
        }
        let root = Path::new(ROOT);
        if !root.join("cgroup.controllers").exists() {
            let st = std::process::Command::new("mount").args(["-t", "cgroup2", "none", ROOT]).status().context("running mount")?;
            if !st.success() {
                bail!("could not mount cgroup2 on {ROOT} ({st})");
            }
        }
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            bail!("this kernel's cgroup2 has no cpu controller (controllers: {:?}): cgroup_weight cannot be set", controllers.trim());
        }
        std::fs::write(root.join("cgroup.subtree_control"), "+cpu").context("enabling the cpu controller in the root cgroup")?;
        for g in weighted {
            let name = owner(g).to_string();
            if out.dirs.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let dir = root.join(format!("scx-scenario-{name}"));
            // A cgroup left by an earlier run that was cut short.
            let _ = std::fs::remove_dir(&dir);
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            out.dirs.push((name, dir.clone()));
            let weight = g.cgroup_weight.unwrap_or(100);
            std::fs::write(dir.join("cpu.weight"), weight.to_string()).with_context(|| format!("setting {}/cpu.weight to {weight}", dir.display()))?;
        }
        Ok(out)
    }

    /// Moves `pid` into its group's cgroup, if the group has one.
    pub(super) fn join(&self, group: &Group, pid: i32) -> Result<()> {
        let Some((_, dir)) = self.dirs.iter().find(|(n, _)| n == owner(group)) else {
            return Ok(());
        };
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).with_context(|| format!("moving pid {pid} into {}", dir.display()))
    }

    /// Removes the cgroups (their processes must have exited).
    pub(super) fn remove(&mut self) {
        for (_, dir) in self.dirs.drain(..) {
            // A cgroup is removable once its last process is reaped.
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}
