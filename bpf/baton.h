/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Everything the steering program shares with user space: constants, the two map layouts and
 * the maps themselves. controller/agent/routing-table.ts mirrors this file byte for byte; the
 * _Static_asserts below pin the layout so a change here fails the build until the mirror (and
 * its unit test, which asserts the same numbers) is changed too.
 *
 * A pinned map survives a controller restart and is reused only if its key size, value size,
 * max_entries and flags still match (libbpf's compatibility check). Changing a layout therefore
 * means unpinning the instance's maps, which drops every steered connection: add fields into
 * the padding where possible.
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
/* IPv6 fragment header frag_off: the offset bits (the low 3 bits are flags). */
#define BATON_IPV6_FRAG_OFFSET 0xfff8

/*
 * State 0 is deliberately not a valid state: a zero-filled or half-written value must never
 * steer or freeze a flow by accident; the program counts it as a bad entry and drops.
 */
enum baton_route_state {
	BATON_ROUTE_FROZEN = 1,  /* the socket is being exported: drop the client's packets */
	BATON_ROUTE_FORWARD = 2, /* the connection lives on target_node: rewrite MACs, XDP_TX */
	BATON_ROUTE_RELEASED = 3, /* as FORWARD, but its owner closed it: a new SYN on the tuple
				   * is a new connection, the entry is deleted and the SYN passed */
};

/* One index per verdict reason in baton_stats (STAT_INDEX in routing-table.ts). */
enum baton_stat {
	BATON_STAT_PASS_NOT_TCP = 0,    /* not IPv4/IPv6 TCP, or too short/malformed to parse */
	BATON_STAT_PASS_NO_ROUTE = 1,   /* TCP, but no entry: the distributor's own kernel serves it */
	BATON_STAT_STEERED = 2,         /* FORWARD entry: sent to the target node */
	BATON_STAT_DROP_FROZEN = 3,     /* FROZEN entry: dropped while the socket is exported */
	BATON_STAT_DROP_BAD_ENTRY = 4,  /* entry with a state this program does not know */
	BATON_STAT_PASS_FRAGMENT = 5,   /* non-first fragment: no ports to look up */
	BATON_STAT_PASS_RECLAIMED = 6,  /* SYN on a RELEASED entry: entry deleted, the kernel sees a new connection */
	BATON_STAT_MAX = 7,
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
 * (steered while FORWARD, dropped while FROZEN); the program adds atomically because several
 * CPUs can hit one flow, user space resets them whenever it rewrites the entry.
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

_Static_assert(sizeof(struct baton_flow_key) == 40, "baton_flow_key layout changed: update routing-table.ts");
_Static_assert(__builtin_offsetof(struct baton_flow_key, vip_addr4) == 16, "baton_flow_key.vip_addr");
_Static_assert(__builtin_offsetof(struct baton_flow_key, client_port) == 32, "baton_flow_key.client_port");
_Static_assert(__builtin_offsetof(struct baton_flow_key, vip_port) == 34, "baton_flow_key.vip_port");
_Static_assert(__builtin_offsetof(struct baton_flow_key, family) == 36, "baton_flow_key.family");
_Static_assert(sizeof(struct baton_route) == 32, "baton_route layout changed: update routing-table.ts");
_Static_assert(__builtin_offsetof(struct baton_route, bytes) == 8, "baton_route.bytes");
_Static_assert(__builtin_offsetof(struct baton_route, state) == 16, "baton_route.state");
_Static_assert(__builtin_offsetof(struct baton_route, target_node) == 20, "baton_route.target_node");
_Static_assert(__builtin_offsetof(struct baton_route, target_mac) == 24, "baton_route.target_mac");
_Static_assert(sizeof(struct baton_stat_counter) == 16, "baton_stat_counter layout changed: update routing-table.ts");

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

#endif /* BATON_H */
