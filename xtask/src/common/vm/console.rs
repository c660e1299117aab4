//! Reading a saved console log and scanning it for the kernel's alarm
//! lines.

use std::path::Path;

use anyhow::{Context, Result};

/// Reads a saved console log back into lines.
pub fn read_console(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the console log {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The alarm lines of a console: kernel `BUG:`/`WARNING:`/Oops/panic
/// reports, lockups and hung tasks, RCU or sched_ext stalls, and sched_ext
/// disabling a BPF scheduler because of an error or a stall. A scheduler
/// unregistered from user space is normal, and so is TCG's
/// `clocksource: Watchdog remote CPU ... read timed out`.
pub fn scan_console(lines: &[String]) -> Vec<String> {
    lines.iter().filter(|l| is_alarm(l)).cloned().collect()
}

fn is_alarm(line: &str) -> bool {
    let msg = strip_printk_time(line);
    let starts = [
        "BUG:",
        "WARNING:",
        "Oops",
        "Kernel panic",
        "general protection fault",
    ];
    if starts.iter().any(|s| msg.starts_with(s)) {
        return true;
    }
    if msg.contains(": BUG:")
        || msg.contains("hard LOCKUP")
        || msg.contains("blocked for more than")
    {
        return true;
    }
    let lower = msg.to_ascii_lowercase();
    let sched_ext = msg.contains("sched_ext");
    if (sched_ext || lower.contains("rcu")) && lower.contains("stall") {
        return true;
    }
    sched_ext && msg.contains("disabled") && lower.contains("error")
}

/// `[   12.345678] message` → `message`.
pub(super) fn strip_printk_time(line: &str) -> &str {
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix('[')
        && let Some(end) = rest.find(']')
        && rest[..end]
            .trim()
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
    {
        return rest[end + 1..].trim_start();
    }
    trimmed
}
