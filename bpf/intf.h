/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The contract between the BPF component (main.bpf.c) and the Rust side:
 * only the constants and structs that both sides read live here.
 */
#ifndef __SCX_BALLOT_INTF_H
#define __SCX_BALLOT_INTF_H

#ifndef __VMLINUX_H__
typedef unsigned char u8;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;
typedef long long s64;
#endif

enum ballot_consts {
	/* The one shared dispatch queue of the first-light FIFO policy. */
	BALLOT_SHARED_DSQ = 0,
};

#endif /* __SCX_BALLOT_INTF_H */
