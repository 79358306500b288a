/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Turns a frame into the routing table's key, or says why it cannot be one. Every read is
 * bounds-checked against data_end (the verifier insists, and a short frame must fall through
 * to the kernel rather than be misread).
 *
 * Fragments: a first fragment carries the TCP header and is looked up like any segment. A
 * later fragment has no ports, so it cannot be matched and goes to the distributor's kernel,
 * which never sees the first piece and discards it at reassembly timeout: the client
 * retransmits. Sending the whole datagram to the distributor instead would be worse: once the
 * connection has moved, the reassembled segment would hit no socket and the kernel would
 * reset the client. TCP sets DF, so this is rare.
 *
 * VLANs: one tag, 802.1Q (0x8100) or 802.1ad (0x88a8), is read past; the frame keeps it, so a
 * steered frame leaves on the VLAN it came in on. The VLAN id is not part of the key: the
 * kernel's socket lookup ignores it too. A second tag (QinQ) is not parsed: such frames go to
 * the kernel, counted on their own. No loop, so the parser's length is fixed for the verifier.
 */
#ifndef BATON_PARSE_H
#define BATON_PARSE_H

#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include "baton.h"

enum baton_parse_result {
	BATON_PARSE_FLOW,      /* key filled in: look it up */
	BATON_PARSE_FLOW_SYN,  /* key filled in, and the segment opens a connection (SYN without ACK) */
	BATON_PARSE_NOT_TCP,   /* not TCP over IPv4/IPv6, or truncated: let the kernel decide */
	BATON_PARSE_FRAGMENT,  /* TCP, but a later fragment without ports */
	BATON_PARSE_STACKED_VLAN, /* more than one VLAN tag: not looked into */
};

/* An 802.1Q/802.1ad tag after the MAC addresses; the uapi headers do not export it. */
struct baton_vlan_hdr {
	__be16 tci;               /* priority, DEI, VLAN id */
	__be16 encapsulated_proto;
};

static __always_inline int baton_is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* The IPv6 fragment extension header; the uapi headers do not export it. */
struct baton_ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

static __always_inline int baton_parse_tcp(void *l4, void *data_end, struct baton_flow_key *key)
{
	struct tcphdr *tcp = l4;

	if ((void *)(tcp + 1) > data_end)
		return BATON_PARSE_NOT_TCP;
	key->client_port = tcp->source;
	key->vip_port = tcp->dest;
	return tcp->syn && !tcp->ack ? BATON_PARSE_FLOW_SYN : BATON_PARSE_FLOW;
}

static __always_inline int baton_parse_ipv4(void *l3, void *data_end, struct baton_flow_key *key)
{
	struct iphdr *ip = l3;

	if ((void *)(ip + 1) > data_end)
		return BATON_PARSE_NOT_TCP;
	if (ip->ihl < BATON_IPV4_IHL_MIN || ip->protocol != IPPROTO_TCP)
		return BATON_PARSE_NOT_TCP;
	if (ip->frag_off & bpf_htons(BATON_IPV4_FRAG_OFFSET))
		return BATON_PARSE_FRAGMENT;

	key->family = BATON_FAMILY_IPV4;
	key->client_addr4 = ip->saddr;
	key->vip_addr4 = ip->daddr;
	/* ihl counts 32-bit words and covers any IP options. */
	return baton_parse_tcp(l3 + ip->ihl * sizeof(__u32), data_end, key);
}

static __always_inline int baton_parse_ipv6(void *l3, void *data_end, struct baton_flow_key *key)
{
	struct ipv6hdr *ip6 = l3;
	void *l4 = ip6 + 1;
	__u8 nexthdr;

	if (l4 > data_end)
		return BATON_PARSE_NOT_TCP;
	nexthdr = ip6->nexthdr;

	/* The one extension header worth a look: a first fragment still has the ports. Any other
	 * extension header goes to the kernel unparsed. */
	if (nexthdr == IPPROTO_FRAGMENT) {
		struct baton_ipv6_frag *frag = l4;

		if ((void *)(frag + 1) > data_end || frag->nexthdr != IPPROTO_TCP)
			return BATON_PARSE_NOT_TCP;
		if (frag->frag_off & bpf_htons(BATON_IPV6_FRAG_OFFSET))
			return BATON_PARSE_FRAGMENT;
		nexthdr = frag->nexthdr;
		l4 = frag + 1;
	}
	if (nexthdr != IPPROTO_TCP)
		return BATON_PARSE_NOT_TCP;

	key->family = BATON_FAMILY_IPV6;
	__builtin_memcpy(key->client_addr6, &ip6->saddr, BATON_ADDR_LEN);
	__builtin_memcpy(key->vip_addr6, &ip6->daddr, BATON_ADDR_LEN);
	return baton_parse_tcp(l4, data_end, key);
}

/* key must arrive zeroed: the hash compares every byte, padding included. */
static __always_inline int baton_parse_flow(void *data, void *data_end, struct baton_flow_key *key)
{
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	__be16 proto;

	if (l3 > data_end)
		return BATON_PARSE_NOT_TCP;
	proto = eth->h_proto;
	if (baton_is_vlan(proto)) {
		struct baton_vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > data_end)
			return BATON_PARSE_NOT_TCP;
		proto = vlan->encapsulated_proto;
		l3 = vlan + 1;
		if (baton_is_vlan(proto))
			return BATON_PARSE_STACKED_VLAN;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return baton_parse_ipv4(l3, data_end, key);
	if (proto == bpf_htons(ETH_P_IPV6))
		return baton_parse_ipv6(l3, data_end, key);
	return BATON_PARSE_NOT_TCP;
}

#endif /* BATON_PARSE_H */
