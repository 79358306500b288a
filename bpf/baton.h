/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Everything the steering program shares with user space: constants, the map layouts and the
 * maps themselves. controller/agent/table-layout.ts mirrors this file byte for byte. Its unit
 * test compares the mirror with the BTF the compiler emits for this header (build/bpf/steer.o
 * and build/bpf/layout.o), so a change made on one side only fails the tests; the
 * _Static_asserts below also pin the layout at build time.
 *
 * A pinned map survives a controller restart and is reused only if its key size, value size,
 * max_entries and flags still match (libbpf's compatibility check). Changing the routing table's
 * layout therefore means unpinning it, which drops every steered connection: add fields into the
 * padding where possible. The other maps hold nothing that must outlive a program (counters; a
 * config batond rewrites at every load): batond replaces them when their layout changed
 * (controller/agent/xdp.ts), so adding a verdict reason costs a counter reset, not a connection.
 */
#ifndef BATON_H
#define BATON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

/* ---- constants ------------------------------------------------------------------------- */

/* Both address families share one key; IPv4 uses the first 4 bytes, the rest stay zero. */
#define BATON_ADDR_LEN 16

/* The IP version number, not AF_*: user space and the wire format use 4/6 as well. */
#define BATON_FAMILY_IPV4 4
#define BATON_FAMILY_IPV6 6

/* Default routing-table size; batond may override it before load (bpf_map__set_max_entries). */
#define BATON_ROUTES_MAX_ENTRIES 262144

/* Minimum IPv4 header length in 32-bit words (no options). */
#define BATON_IPV4_IHL_MIN 5
/* IPv4 frag_off: the offset bits; non-zero means "not the first fragment" (no TCP header). */
#define BATON_IPV4_FRAG_OFFSET 0x1fff
/* IPv4 frag_off: more fragments follow. With the offset bits: "one piece of a fragmented datagram". */
#define BATON_IPV4_MORE_FRAGMENTS 0x2000
/* IPv6 fragment header frag_off: the offset bits (the low 3 bits are flags). */
#define BATON_IPV6_FRAG_OFFSET 0xfff8

/*
 * State 0 is deliberately not a valid state: a zero-filled or half-written value must never
 * steer or freeze a flow by accident; the program counts it as a bad entry and drops.
 *
 * A closing connection goes FORWARD → RELEASED → FINISHED → (deleted). Only the serving node can
 * tell when the 4-tuple is free again: its application's close makes the entry RELEASED, its
 * kernel being done with the tuple (no socket, or TIME_WAIT) makes it FINISHED. A SYN frees
 * the tuple for a new connection only once FINISHED; before that, whoever sends it (the client
 * reconnecting early, or anyone spoofing the client) only reaches the serving node's kernel.
 */
enum baton_route_state {
	BATON_ROUTE_FROZEN = 1,   /* the socket is being exported: drop the client's packets */
	BATON_ROUTE_FORWARD = 2,  /* the connection lives on target_node: rewrite MACs, XDP_TX */
	BATON_ROUTE_RELEASED = 3, /* as FORWARD, SYNs included: its owner's application closed it,
				   * TCP's closing handshake goes on there */
	BATON_ROUTE_FINISHED = 4, /* as FORWARD, but the owner's kernel is done with the tuple: a
				   * new SYN is a new connection, the entry is deleted and the SYN passed */
};

/* One index per verdict reason in baton_stats (STAT_INDEX in controller/agent/table-layout.ts). */
enum baton_stat {
	BATON_STAT_PASS_NOT_TCP = 0,      /* not IPv4/IPv6 TCP nor an ICMP error about TCP, or too
					   * short/malformed to parse */
	BATON_STAT_PASS_NO_ROUTE = 1,     /* TCP, or an ICMP error about TCP, but no entry: the
					   * distributor's own kernel serves the flow */
	BATON_STAT_STEERED = 2,           /* FORWARD/RELEASED/FINISHED entry: sent to the target node
					   * (ICMP errors: BATON_STAT_STEERED_ICMP) */
	BATON_STAT_DROP_FROZEN = 3,       /* FROZEN entry: dropped while the socket is exported */
	BATON_STAT_DROP_BAD_ENTRY = 4,    /* entry with a state this program does not know */
	BATON_STAT_PASS_FRAGMENT = 5,     /* non-first fragment: no ports to look up */
	BATON_STAT_PASS_RECLAIMED = 6,    /* SYN on a FINISHED entry: entry deleted, the kernel sees a new connection */
	BATON_STAT_PASS_NOT_FOR_US = 7,   /* entry, but the frame's destination MAC is not this
					   * interface's (another host's, broadcast, multicast) */
	BATON_STAT_PASS_UNCONFIGURED = 8, /* entry, but baton_config does not describe this interface */
	BATON_STAT_PASS_STACKED_VLAN = 9, /* more than one VLAN tag: not parsed */
	BATON_STAT_STEERED_RELEASED_SYN = 10, /* SYN on a RELEASED entry: sent to the target node, whose
					       * kernel answers it (the entry stays) */
	BATON_STAT_PASS_SERVED_HERE = 11, /* entry naming this node: a backup distributor's replica (or
					   * one taken over) of a connection this node serves itself */
	BATON_STAT_PASS_FROM_DISTRIBUTOR = 12, /* entry, but another distributor already steered the
						* frame here (its source MAC): this node's kernel serves it */
	BATON_STAT_STEERED_ICMP = 13,     /* an ICMP error about a FORWARD/RELEASED/FINISHED flow (a
					   * Packet Too Big above all): sent to the target node, whose
					   * socket it is about */
	BATON_STAT_MAX = 14,
};

/* ---- shared structs -------------------------------------------------------------------- */

/*
 * The client's 4-tuple as the distributor sees it arrive: client → DVIPA. Addresses and ports
 * in network byte order. Hash keys are compared as raw bytes, so every writer must zero the
 * padding and the unused tail of an IPv4 address.
 */
struct baton_flow_key {
	union {
		__be32 client_addr4;
		__be32 client_addr6[4];
	};
	union {
		__be32 vip_addr4;
		__be32 vip_addr6[4];
	};
	__be16 client_port;
	__be16 vip_port;
	__u8 family;     /* BATON_FAMILY_IPV4 or BATON_FAMILY_IPV6 */
	__u8 pad[3];
};

/*
 * Where a connection's packets go. packets/bytes count every frame that matched the entry
 * (steered while FORWARD, RELEASED or FINISHED, dropped while FROZEN or of an unknown state);
 * freeze and forward restart them (batond writes the whole value), release and finish carry
 * them over. They stay in the entry rather than in a per-CPU map like baton_stats, on
 * measurement (docs/datapath.md, "Per-flow counters"): the adds land on the cache line the
 * lookup has just read, where a second map costs a second lookup and, with many flows, its
 * cache misses on every packet; and a flow's packets reach one CPU at a time (a NIC hashes a
 * flow to one receive queue), so the adds are seldom contended. Atomic all the same, so that a
 * flow whose packets do reach two CPUs at once loses no count.
 */
struct baton_route {
	__u64 packets;
	__u64 bytes;
	__u32 state;        /* enum baton_route_state */
	__u32 target_node;  /* batond's node id; informational for the data path */
	__u8 target_mac[ETH_ALEN];
	__u8 pad[2];
};

/* One per-CPU slot of baton_stats. */
struct baton_stat_counter {
	__u64 packets;
	__u64 bytes;
};

/*
 * What the program must know about the interface it runs on, written by batond before it
 * attaches the program (the only slot of baton_config). The array starts zero-filled: ifindex 0
 * names no interface, so a program nobody configured steers nothing. ifindex also ties the MAC
 * to one interface: the same pinned config seen from a program left attached elsewhere does
 * not match there.
 */
#define BATON_MAX_PEER_DISTRIBUTORS 8

struct baton_config {
	__u32 ifindex;            /* the interface the program was attached to, in its namespace */
	__u8 if_mac[ETH_ALEN];    /* that interface's MAC: the only destination steered frames have */
	__u8 pad[2];
	__u32 peer_count;         /* how many peer_macs are set */
	/* While this node stands by, the cluster's other distributors' MACs (each padded to 8 bytes):
	 * a frame from one of them was steered already, and is not steered again (steer.c says why).
	 * None while it is the active distributor. */
	__u8 peer_macs[BATON_MAX_PEER_DISTRIBUTORS][8];
};

_Static_assert(sizeof(struct baton_flow_key) == 40, "baton_flow_key layout changed: update table-layout.ts");
_Static_assert(__builtin_offsetof(struct baton_flow_key, vip_addr4) == 16, "baton_flow_key.vip_addr");
_Static_assert(__builtin_offsetof(struct baton_flow_key, client_port) == 32, "baton_flow_key.client_port");
_Static_assert(__builtin_offsetof(struct baton_flow_key, vip_port) == 34, "baton_flow_key.vip_port");
_Static_assert(__builtin_offsetof(struct baton_flow_key, family) == 36, "baton_flow_key.family");
_Static_assert(sizeof(struct baton_route) == 32, "baton_route layout changed: update table-layout.ts");
_Static_assert(__builtin_offsetof(struct baton_route, bytes) == 8, "baton_route.bytes");
_Static_assert(__builtin_offsetof(struct baton_route, state) == 16, "baton_route.state");
_Static_assert(__builtin_offsetof(struct baton_route, target_node) == 20, "baton_route.target_node");
_Static_assert(__builtin_offsetof(struct baton_route, target_mac) == 24, "baton_route.target_mac");
_Static_assert(sizeof(struct baton_stat_counter) == 16, "baton_stat_counter layout changed: update table-layout.ts");
_Static_assert(sizeof(struct baton_config) == 80, "baton_config layout changed: update table-layout.ts");
_Static_assert(__builtin_offsetof(struct baton_config, if_mac) == 4, "baton_config.if_mac");
_Static_assert(__builtin_offsetof(struct baton_config, peer_count) == 12, "baton_config.peer_count");
_Static_assert(__builtin_offsetof(struct baton_config, peer_macs) == 16, "baton_config.peer_macs");

/* ---- maps (pinned by batond under /sys/fs/bpf/baton/<instance>/) ------------------------ */

/*
 * Not LRU: evicting a live entry would silently send a handed-off connection back to the
 * distributor, whose kernel answers it with a reset. A full table must fail the insert loudly.
 * NO_PREALLOC: the table is sized for the worst case but usually nearly empty.
 */

/* Connection routing table, client 4-tuple → frozen/forward: batond writes entries, XDP bumps counters. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, BATON_ROUTES_MAX_ENTRIES);
	__type(key, struct baton_flow_key);
	__type(value, struct baton_route);
} baton_routes SEC(".maps");

/* Verdict counters indexed by enum baton_stat: written by XDP only, summed over CPUs by batond. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BATON_STAT_MAX);
	__type(key, __u32);
	__type(value, struct baton_stat_counter);
} baton_stats SEC(".maps");

/* One struct baton_config at key 0: written by batond, read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct baton_config);
} baton_config SEC(".maps");

#endif /* BATON_H */
