//! Tests of the kernel module: config fragments, image versions, package lists.

use super::*;
use super::config::{Requirement, parse_fragment, parse_fragment_line, check_config, bzimage_version};
use super::debian::{parse_depends, image_release, kernel_packages};

const FRAG: &str = "\
# sched_ext
CONFIG_SCHED_CLASS_EXT=y
CONFIG_OVERLAY_FS=y # module ok
CONFIG_VIRTIO_NET=y   #   module ok
# CONFIG_SCHED_CORE is not set
CONFIG_HZ=1000
";

fn missing(config: &str) -> Vec<String> {
    check_config(config, FRAG)
        .iter()
        .map(|m| m.to_string())
        .collect()
}

#[test]
fn satisfied_config_has_nothing_missing() {
    let config = "CONFIG_SCHED_CLASS_EXT=y\nCONFIG_OVERLAY_FS=m\nCONFIG_VIRTIO_NET=y\n\
                  # CONFIG_SCHED_CORE is not set\nCONFIG_HZ=1000\n";
    assert_eq!(missing(config), Vec::<String>::new());
}

#[test]
fn module_only_where_marked() {
    let config =
        "CONFIG_SCHED_CLASS_EXT=m\nCONFIG_OVERLAY_FS=m\nCONFIG_VIRTIO_NET=m\nCONFIG_HZ=1000\n";
    assert_eq!(missing(config), ["CONFIG_SCHED_CLASS_EXT: need y, found m"]);
}

#[test]
fn not_set_and_absent_are_reported() {
    let config = "# CONFIG_SCHED_CLASS_EXT is not set\nCONFIG_SCHED_CORE=y\nCONFIG_HZ=250\n";
    assert_eq!(
        missing(config),
        [
            "CONFIG_SCHED_CLASS_EXT: need y, found not set",
            "CONFIG_OVERLAY_FS: need y or m, found absent",
            "CONFIG_VIRTIO_NET: need y or m, found absent",
            "CONFIG_SCHED_CORE: need not set, found y",
            "CONFIG_HZ: need 1000, found 250",
        ]
    );
}

#[test]
fn missing_carries_the_parts() {
    let m = &check_config("", "CONFIG_BPF=y\n")[0];
    assert_eq!(
        (m.option.as_str(), m.required.as_str(), m.found.as_str()),
        ("CONFIG_BPF", "y", "absent")
    );
}

#[test]
fn malformed_fragment_lines_are_errors() {
    assert!(parse_fragment_line("BPF=y").is_err());
    assert!(parse_fragment_line("CONFIG_BPF").is_err());
    assert!(parse_fragment_line("CONFIG_BPF=y # modules welcome").is_err());
    assert!(parse_fragment_line("CONFIG_HZ=1000 # module ok").is_err());
    assert_eq!(parse_fragment_line("# a comment"), Ok(None));
}

#[test]
fn fragment_is_well_formed() {
    let text = include_str!("../../../../kernel-config/scx_ballot.config");
    for line in text.lines() {
        if let Err(e) = parse_fragment_line(line) {
            panic!("kernel-config/scx_ballot.config: {e}");
        }
    }
    let options = parse_fragment(text);
    for must in [
        "CONFIG_SCHED_CLASS_EXT",
        "CONFIG_BPF_SYSCALL",
        "CONFIG_DEBUG_INFO_BTF",
    ] {
        assert!(
            options
                .iter()
                .any(|(o, r)| o == must && *r == Requirement::BuiltIn),
            "{must} must be required built in"
        );
    }
}

#[test]
fn choice_parses() {
    assert_eq!("default".parse::<KernelChoice>(), Ok(KernelChoice::Default));
    assert_eq!("host".parse::<KernelChoice>(), Ok(KernelChoice::Host));
    assert_eq!(
        "/tmp/bzImage".parse::<KernelChoice>(),
        Ok(KernelChoice::Path("/tmp/bzImage".into()))
    );
    assert!("".parse::<KernelChoice>().is_err());
}

#[test]
fn depends_resolution() {
    let meta = "linux-image-cloud-amd64\n  Depends: linux-base-cloud-amd64\n  \
                Depends: linux-image-7.3.4+deb13-cloud-amd64\n  Depends: linux-modules-cloud-amd64\n";
    let version = image_release(&parse_depends(meta)).unwrap();
    assert_eq!(version, "7.3.4+deb13-cloud-amd64");
    let image = "linux-image-7.3.4+deb13-cloud-amd64\n  PreDepends: linux-base\n \
                 |Depends: <dracut>\n |Depends: <initramfs-tools>\n  Depends: <linux-initramfs-tool>\n  \
                 Depends: linux-base-7.3.4+deb13-cloud-amd64\n  Depends: linux-binary-7.3.4+deb13-cloud-amd64\n  \
                 Depends: linux-modules-7.3.4+deb13-cloud-amd64\n  Breaks: <fwupdate>\n  \
                 Suggests: linux-doc-7.3\n";
    assert_eq!(
        kernel_packages(&version, &parse_depends(image)),
        [
            "linux-image-7.3.4+deb13-cloud-amd64",
            "linux-base-7.3.4+deb13-cloud-amd64",
            "linux-binary-7.3.4+deb13-cloud-amd64",
            "linux-modules-7.3.4+deb13-cloud-amd64",
        ]
    );
}

#[test]
fn bzimage_header_version() {
    let mut img = vec![0u8; 0x1000];
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
    let s = b"7.3.4+deb13-cloud-amd64 (debian-kernel@example) #1 SMP\0";
    img[0x500..0x500 + s.len()].copy_from_slice(s);
    assert_eq!(
        bzimage_version(&img).as_deref(),
        Some("7.3.4+deb13-cloud-amd64")
    );
    img[0x202] = b'X';
    assert_eq!(bzimage_version(&img), None);
    assert_eq!(bzimage_version(b"short"), None);
}
