// SPDX-License-Identifier: GPL-2.0
// Lab helper: attached to the bridge-side peer of every node's veth. On veth, a frame sent with
// XDP_TX is only delivered when the peer device runs an XDP program of its own (docs/datapath.md,
// "XDP_TX needs an XDP program on the peer veth"); this one lets everything through unchanged.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int baton_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
