// SPDX-License-Identifier: GPL-2.0
// The distributor's XDP program: every frame arriving on the DVIPA-facing interface passes
// through here before the kernel sees it. A flow with no routing-table entry is the
// distributor's own (its routing application owns the socket); a FROZEN flow is mid-export and
// must not change the socket under the export; a FORWARD flow has moved to another node on
// the same L2 segment and is bounced back out with that node's MAC, if the frame was sent to
// this interface (baton_config says which one, and its MAC). An ICMP error about a flow (parse.h
// finds the flow in the segment it quotes) goes wherever that flow's segments go: the socket it
// is about may have moved, and a Packet Too Big that only reached the distributor would stop
// path MTU discovery for the connection.
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

static __always_inline void baton_count(struct baton_route *route, __u64 bytes)
{
	// Atomic: a flow whose packets reach several receive queues is counted on several CPUs at
	// once. Uncontended (the usual case: one queue per flow) the two adds cost a few ns on the
	// line the lookup brought in; why not a per-CPU map: baton.h, struct baton_route.
	__sync_fetch_and_add(&route->packets, 1);
	__sync_fetch_and_add(&route->bytes, bytes);
}

// The interface's MAC is unicast (batond refuses anything else), so equality alone would do;
// the group bit is tested as well so that a config written by hand cannot make the program
// steer broadcasts.
static __always_inline int baton_sent_to(const __u8 *dest, const __u8 *own)
{
	if (dest[0] & 1)
		return 0;
	return ((dest[0] ^ own[0]) | (dest[1] ^ own[1]) | (dest[2] ^ own[2]) |
		(dest[3] ^ own[3]) | (dest[4] ^ own[4]) | (dest[5] ^ own[5])) == 0;
}

// Whether src is another distributor's MAC (the config lists them): a frame it steered here.
static __always_inline int baton_from_peer(const __u8 *src, const struct baton_config *config)
{
	__u32 count = config->peer_count;

#pragma unroll
	for (int i = 0; i < BATON_MAX_PEER_DISTRIBUTORS; i++) {
		if (i < count && baton_sent_to(src, config->peer_macs[i]))
			return 1;
	}
	return 0;
}

SEC("xdp")
int baton_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct baton_flow_key key = {};
	struct baton_config *config;
	struct baton_route *route;
	struct ethhdr *eth = data;
	__u32 zero = 0;
	__u32 state;
	int syn = 0;
	int icmp = 0;

	switch (baton_parse_flow(data, data_end, &key)) {
	case BATON_PARSE_FLOW:
		break;
	case BATON_PARSE_FLOW_SYN:
		syn = 1;
		break;
	case BATON_PARSE_FLOW_ICMP:
		// Never a SYN: an error reclaims no tuple, it only informs the flow's socket.
		icmp = 1;
		break;
	case BATON_PARSE_FRAGMENT:
		return baton_verdict(BATON_STAT_PASS_FRAGMENT, len, XDP_PASS);
	case BATON_PARSE_STACKED_VLAN:
		return baton_verdict(BATON_STAT_PASS_STACKED_VLAN, len, XDP_PASS);
	default:
		return baton_verdict(BATON_STAT_PASS_NOT_TCP, len, XDP_PASS);
	}

	route = bpf_map_lookup_elem(&baton_routes, &key);
	if (!route)
		return baton_verdict(BATON_STAT_PASS_NO_ROUTE, len, XDP_PASS);

	// Read once: batond may rewrite the entry while this frame is in flight.
	state = route->state;
	switch (state) {
	case BATON_ROUTE_FROZEN:
		// Dropped whoever it was addressed to: the drop is what protects the export, and
		// needs no config. The client retransmits what is dropped here once the entry forwards;
		// a router sends its ICMP error again at the target's next segment too big for it.
		baton_count(route, len);
		return baton_verdict(BATON_STAT_DROP_FROZEN, len, XDP_DROP);
	case BATON_ROUTE_FORWARD:
	case BATON_ROUTE_RELEASED:
	case BATON_ROUTE_FINISHED:
		break;
	default:
		// Written by a newer controller or half-initialised: never guess where a flow lives;
		// passing it would let the distributor's kernel reset a moved connection.
		baton_count(route, len);
		return baton_verdict(BATON_STAT_DROP_BAD_ENTRY, len, XDP_DROP);
	}

	// From here the frame is rewritten or changes the table, so it must have been sent to
	// this interface. A frame for another host (promiscuous mode, a flooding switch, a DVIPA
	// taken over by another distributor) or to a group address is passed untouched: the
	// kernel's TCP ignores any segment not addressed to this host, while steering it would
	// turn it into a unicast copy for the target.
	config = bpf_map_lookup_elem(&baton_config, &zero);
	if (!config || config->ifindex == 0 || config->ifindex != ctx->ingress_ifindex)
		return baton_verdict(BATON_STAT_PASS_UNCONFIGURED, len, XDP_PASS);
	// The parser proved the Ethernet header is there; the verifier wants it proved again.
	if ((void *)(eth + 1) > data_end)
		return baton_verdict(BATON_STAT_PASS_NOT_TCP, len, XDP_PASS);
	if (!baton_sent_to(eth->h_dest, config->if_mac))
		return baton_verdict(BATON_STAT_PASS_NOT_FOR_US, len, XDP_PASS);

	// Another distributor steered this frame here: this node serves the flow, whatever its own
	// table says. A backup's replica follows the active table a replication round trip late;
	// while a connection moves to the backup, its entry there still names the node it leaves,
	// and steering the frame on would take the client's bytes back to that node, where the
	// socket is gone (it answers with a reset) or is being exported (it acknowledges bytes the
	// new owner never gets). Seen on VMs: docs/datapath.md. It changes nothing in the table.
	// batond lists the peers only while this node stands by: an active distributor's own table
	// is the truth, and a frame a lagging peer steered here is steered on by it.
	if (baton_from_peer(eth->h_source, config))
		return baton_verdict(BATON_STAT_PASS_FROM_DISTRIBUTOR, len, XDP_PASS);

	// A SYN means the client reuses the tuple for a new connection, which is the
	// distributor's, but only once the serving node's kernel has let the old one go. Earlier
	// (FORWARD, RELEASED) the SYN goes to the serving node, whose kernel answers it as TCP
	// does (mostly a challenge ACK): a spoofed SYN cannot tear down the entry of a connection
	// still open or closing there.
	if (syn && state == BATON_ROUTE_FINISHED) {
		bpf_map_delete_elem(&baton_routes, &key);
		return baton_verdict(BATON_STAT_PASS_RECLAIMED, len, XDP_PASS);
	}

	// The entry names this node: a backup distributor holds a replica of the table, which names
	// it for the connections it serves itself, and the active distributor sends it their frames.
	// Its kernel has the socket; sent back out of the interface they came in on, they would be lost.
	if (baton_sent_to(route->target_mac, config->if_mac)) {
		baton_count(route, len);
		return baton_verdict(BATON_STAT_PASS_SERVED_HERE, len, XDP_PASS);
	}

	baton_count(route, len);
	// Only the MACs change: a VLAN tag stays, so the frame leaves on the VLAN it came in on. No
	// checksum covers them, so an ICMP error's (IP header, ICMP over the quote) stay valid too.
	__builtin_memcpy(eth->h_source, config->if_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, route->target_mac, ETH_ALEN);
	if (icmp)
		return baton_verdict(BATON_STAT_STEERED_ICMP, len, XDP_TX);
	if (syn && state == BATON_ROUTE_RELEASED)
		return baton_verdict(BATON_STAT_STEERED_RELEASED_SYN, len, XDP_TX);
	return baton_verdict(BATON_STAT_STEERED, len, XDP_TX);
}

char LICENSE[] SEC("license") = "GPL";
