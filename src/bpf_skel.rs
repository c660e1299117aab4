//! The libbpf-rs skeleton that `build.rs` generates from `bpf/main.bpf.c`.
include!(concat!(env!("OUT_DIR"), "/bpf_skel.rs"));
