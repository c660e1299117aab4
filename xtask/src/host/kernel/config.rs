//! Checking a kernel's config against the fragment in `kernel-config/`,
//! and reading a kernel image's version.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::Kernel;

/// Checks `kernel`'s config against the fragment file: prints every missing
/// option and fails if any is missing. A kernel without a known config gets
/// a warning, not an error (its config cannot be checked).
pub fn verify_config(kernel: &Kernel, fragment: &Path) -> Result<()> {
    let fragment_text = std::fs::read_to_string(fragment)
        .with_context(|| format!("reading the config fragment {}", fragment.display()))?;
    let Some(config_path) = &kernel.config else {
        eprintln!(
            "warning: no config found for {}: cannot check it against {}",
            kernel.image.display(),
            fragment.display()
        );
        return Ok(());
    };
    let config = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading the kernel config {}", config_path.display()))?;
    let missing = check_config(&config, &fragment_text);
    let checked = parse_fragment(&fragment_text).len();
    if missing.is_empty() {
        println!(
            "config:  {} has all {checked} options of {}",
            config_path.display(),
            fragment.display()
        );
        return Ok(());
    }
    for m in &missing {
        eprintln!("missing: {m}");
    }
    bail!(
        "the kernel {} lacks {} of the {checked} options in {}",
        kernel.version,
        missing.len(),
        fragment.display()
    )
}

/// One fragment option the config does not satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// `CONFIG_...`
    pub option: String,
    /// What the fragment asks for: `y`, `y or m`, `not set`, or a value.
    pub required: String,
    /// What the config has: `m`, `not set`, `absent`, or a value.
    pub found: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: need {}, found {}",
            self.option, self.required, self.found
        )
    }
}

/// What a fragment line asks of one option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Requirement {
    /// `=y`
    BuiltIn,
    /// `=y # module ok`
    BuiltInOrModule,
    /// `# CONFIG_X is not set`
    NotSet,
    /// Any other value, compared verbatim (`=64`, `="string"`).
    Value(String),
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("y"),
            Self::BuiltInOrModule => f.write_str("y or m"),
            Self::NotSet => f.write_str("not set"),
            Self::Value(v) => f.write_str(v),
        }
    }
}

/// The marker that lets a `=y` fragment line accept `=m`.
const MODULE_OK: &str = "module ok";

/// Parses a fragment into (option, requirement) pairs. Lines that are not
/// options (comments, blanks, malformed lines) are skipped; the `tidy`-style
/// test `fragment_is_well_formed` keeps the real fragment free of the latter.
pub(super) fn parse_fragment(fragment: &str) -> Vec<(String, Requirement)> {
    fragment
        .lines()
        .filter_map(|line| parse_fragment_line(line).ok().flatten())
        .collect()
}

/// `Ok(None)` for comments and blank lines, `Err` for a line that looks like
/// neither a comment nor an option.
pub(super) fn parse_fragment_line(line: &str) -> Result<Option<(String, Requirement)>, String> {
    let line = line.trim();
    if let Some(name) = not_set_line(line) {
        return Ok(Some((name.to_string(), Requirement::NotSet)));
    }
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (setting, comment) = match line.split_once('#') {
        Some((s, c)) => (s.trim(), Some(c.trim())),
        None => (line, None),
    };
    let Some((name, value)) = setting.split_once('=') else {
        return Err(format!("not an option line: {line}"));
    };
    if !name.starts_with("CONFIG_") || value.is_empty() {
        return Err(format!("not an option line: {line}"));
    }
    let module_ok = match comment {
        None => false,
        Some(c) if c == MODULE_OK => true,
        Some(c) => return Err(format!("unknown marker `# {c}` (only `# {MODULE_OK}`)")),
    };
    let req = match (value, module_ok) {
        ("y", false) => Requirement::BuiltIn,
        ("y", true) => Requirement::BuiltInOrModule,
        (_, true) => return Err(format!("`# {MODULE_OK}` only goes with =y: {line}")),
        (v, false) => Requirement::Value(v.to_string()),
    };
    Ok(Some((name.to_string(), req)))
}

/// The option name of a `# CONFIG_X is not set` line.
fn not_set_line(line: &str) -> Option<&str> {
    let name = line.strip_prefix("# ")?.strip_suffix(" is not set")?;
    name.starts_with("CONFIG_").then_some(name)
}

/// Parses a kernel `.config` into option → value, with `n` for
/// `# CONFIG_X is not set`.
fn parse_config(config: &str) -> HashMap<&str, &str> {
    let mut map = HashMap::new();
    for line in config.lines().map(str::trim) {
        if let Some(name) = not_set_line(line) {
            map.insert(name, "n");
        } else if let Some((name, value)) = line.split_once('=')
            && name.starts_with("CONFIG_")
        {
            map.insert(name, value);
        }
    }
    map
}

/// Compares a kernel `.config` with a fragment and returns every fragment
/// option the config does not satisfy, in fragment order.
///
/// `=y` needs `=y`; `=y # module ok` accepts `=y` or `=m`;
/// `# CONFIG_X is not set` needs the option unset or absent; other values
/// must match verbatim.
pub fn check_config(config: &str, fragment: &str) -> Vec<Missing> {
    let have = parse_config(config);
    parse_fragment(fragment)
        .into_iter()
        .filter_map(|(option, req)| {
            let found = have.get(option.as_str()).copied();
            let ok = match (&req, found) {
                (Requirement::BuiltIn, Some("y")) => true,
                (Requirement::BuiltInOrModule, Some("y" | "m")) => true,
                (Requirement::NotSet, None | Some("n")) => true,
                (Requirement::Value(v), Some(f)) => v == f,
                _ => false,
            };
            (!ok).then(|| Missing {
                option,
                required: req.to_string(),
                found: match found {
                    None => "absent".to_string(),
                    Some("n") => "not set".to_string(),
                    Some(v) => v.to_string(),
                },
            })
        })
        .collect()
}

/// The kernel release string of a bzImage (from its setup header), if the
/// bytes are one.
pub fn bzimage_version(image: &[u8]) -> Option<String> {
    // Linux boot protocol: "HdrS" at 0x202, and at 0x20e the offset (minus
    // 0x200) of a NUL-terminated "<release> (<builder>) #1 SMP ..." string.
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]) as usize;
    if ptr == 0 {
        return None;
    }
    let text = image.get(ptr + 0x200..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let version = std::str::from_utf8(&text[..end]).ok()?;
    (!version.is_empty()).then(|| version.to_string())
}

pub(super) fn image_version(image: &Path) -> Result<String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(image)
        .with_context(|| format!("opening the kernel image {}", image.display()))?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .with_context(|| format!("reading the kernel image {}", image.display()))?;
    bzimage_version(&head).with_context(|| {
        format!(
            "{} is not an x86 bzImage (no version in its boot header)",
            image.display()
        )
    })
}
