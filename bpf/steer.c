// SPDX-License-Identifier: GPL-2.0
// The distributor's XDP program: every frame arriving on the DVIPA-facing interface passes
// through here before the kernel sees it. A flow with no routing-table entry is the
// distributor's own (its routing application owns the socket); a FROZEN flow is mid-export and
// must not change the socket under the export; a FORWARD flow has moved to another node on
// the same L2 segment and is bounced back out with that node's MAC.
#include "baton.h"
#include "parse.h"

static __always_inline int baton_verdict(__u32 reason, __u64 bytes, int action)
{
	struct baton_stat_counter *c = bpf_map_lookup_elem(&baton_stats, &reason);

	// Per-CPU slot: no other CPU writes it, plain adds are enough.
	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
	return action;
}

SEC("xdp")
int baton_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct baton_flow_key key = {};
	struct baton_route *route;
	struct ethhdr *eth = data;
	int syn = 0;

	switch (baton_parse_flow(data, data_end, &key)) {
	case BATON_PARSE_FLOW:
		break;
	case BATON_PARSE_FLOW_SYN:
		syn = 1;
		break;
	case BATON_PARSE_FRAGMENT:
		return baton_verdict(BATON_STAT_PASS_FRAGMENT, len, XDP_PASS);
	default:
		return baton_verdict(BATON_STAT_PASS_NOT_TCP, len, XDP_PASS);
	}

	route = bpf_map_lookup_elem(&baton_routes, &key);
	if (!route)
		return baton_verdict(BATON_STAT_PASS_NO_ROUTE, len, XDP_PASS);

	__sync_fetch_and_add(&route->packets, 1);
	__sync_fetch_and_add(&route->bytes, len);

	switch (route->state) {
	case BATON_ROUTE_FROZEN:
		// The client retransmits what is dropped here once the entry forwards.
		return baton_verdict(BATON_STAT_DROP_FROZEN, len, XDP_DROP);
	case BATON_ROUTE_RELEASED:
		// The owner closed the connection; the entry only lingers for its last packets. A SYN
		// means the client reuses the tuple for a new connection, which is the distributor's.
		// (A SYN on a live FORWARD entry still goes to the target, whose socket answers it with
		// a challenge ACK: a spoofed SYN cannot tear a connection down here.)
		if (syn) {
			bpf_map_delete_elem(&baton_routes, &key);
			return baton_verdict(BATON_STAT_PASS_RECLAIMED, len, XDP_PASS);
		}
		/* fall through */
	case BATON_ROUTE_FORWARD:
		// The parser proved the Ethernet header is there; the verifier wants it proved again.
		if ((void *)(eth + 1) > data_end)
			return baton_verdict(BATON_STAT_PASS_NOT_TCP, len, XDP_PASS);
		// The frame was addressed to this interface, so its destination MAC is our own: reuse
		// it as the source instead of keeping the interface's MAC in a map.
		__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, route->target_mac, ETH_ALEN);
		return baton_verdict(BATON_STAT_STEERED, len, XDP_TX);
	default:
		// Written by a newer controller or half-initialised: never guess where a flow lives;
		// passing it would let the distributor's kernel reset a moved connection.
		return baton_verdict(BATON_STAT_DROP_BAD_ENTRY, len, XDP_DROP);
	}
}

char LICENSE[] SEC("license") = "GPL";
