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
 *
 * ICMP errors: an ICMPv4 destination unreachable, time exceeded or parameter problem, or an
 * ICMPv6 destination unreachable, packet too big, time exceeded or parameter problem, quotes the
 * packet it is about. When that packet is TCP of the same family, the error belongs to the
 * quoted flow, whose socket may have moved to another node: a Packet Too Big must reach that
 * socket or path MTU discovery stops there (docs/datapath.md, "ICMP errors follow their flow").
 * Every other ICMP message goes to the kernel as before: echo, neighbour discovery and MLD are
 * about no flow, and a redirect changes a host's routes rather than informing a socket.
 */
#ifndef BATON_PARSE_H
#define BATON_PARSE_H

#include <linux/in.h>
#include <linux/icmpv6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include "baton.h"

enum baton_parse_result {
	BATON_PARSE_FLOW,      /* key filled in: look it up */
	BATON_PARSE_FLOW_SYN,  /* key filled in, and the segment opens a connection (SYN without ACK) */
	BATON_PARSE_FLOW_ICMP, /* key filled in from an ICMP error: the flow of the segment it quotes */
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

/* The first 8 bytes of an ICMP and of an ICMPv6 message, the same for both: the quoted packet
 * follows them in an error. Defined here because linux/icmp.h pulls in libc's net/if.h, which
 * does not build for the BPF target; its type numbers with it (RFC 792). */
struct baton_icmp_hdr {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be32 rest; /* unused, or the next-hop MTU (fragmentation needed), the MTU (packet too big)… */
};

#define BATON_ICMP_DEST_UNREACH 3
#define BATON_ICMP_TIME_EXCEEDED 11
#define BATON_ICMP_PARAMETERPROB 12

/*
 * What an ICMP error is sure to carry of the TCP header it quotes: the first 64 bits of the
 * quoted datagram's data (RFC 792; RFC 1812 and RFC 4443 ask for as much as fits, which not
 * every router sends). Both ports are in them, so nothing more is required; the kernel requires
 * no more either before it hands an error to TCP (icmp_socket_deliver, icmpv6_notify).
 */
struct baton_tcp_quote {
	__be16 source;
	__be16 dest;
	__be32 seq; /* not read here: the serving node's kernel checks it against its socket's window */
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

/* The quoted segment was sent by the node serving the flow, DVIPA → client: the key is its
 * ports the other way round (the caller reverses the addresses the same way). */
static __always_inline int baton_parse_quote(void *l4, void *data_end, struct baton_flow_key *key)
{
	struct baton_tcp_quote *quote = l4;

	if ((void *)(quote + 1) > data_end)
		return BATON_PARSE_NOT_TCP;
	key->client_port = quote->dest;
	key->vip_port = quote->source;
	return BATON_PARSE_FLOW_ICMP;
}

/* The ICMPv4 errors that quote the datagram they are about (RFC 792). Source quench is one too,
 * but deprecated (RFC 6633) and ignored by TCP: it stays the distributor's. */
static __always_inline int baton_is_icmp4_error(__u8 type)
{
	return type == BATON_ICMP_DEST_UNREACH || type == BATON_ICMP_TIME_EXCEEDED || type == BATON_ICMP_PARAMETERPROB;
}

static __always_inline int baton_parse_icmp4(void *l4, void *data_end, struct baton_flow_key *key)
{
	struct baton_icmp_hdr *icmp = l4;
	struct iphdr *quoted = (void *)(icmp + 1);

	if ((void *)(quoted + 1) > data_end || !baton_is_icmp4_error(icmp->type))
		return BATON_PARSE_NOT_TCP;
	if (quoted->ihl < BATON_IPV4_IHL_MIN || quoted->protocol != IPPROTO_TCP)
		return BATON_PARSE_NOT_TCP;
	/* A quoted later fragment carries no ports: no flow to name. */
	if (quoted->frag_off & bpf_htons(BATON_IPV4_FRAG_OFFSET))
		return BATON_PARSE_NOT_TCP;

	key->family = BATON_FAMILY_IPV4;
	key->client_addr4 = quoted->daddr;
	key->vip_addr4 = quoted->saddr;
	/* ihl is 4 bits, so the quote lies at most 60 bytes further: bounded for the verifier. */
	return baton_parse_quote((void *)quoted + quoted->ihl * sizeof(__u32), data_end, key);
}

static __always_inline int baton_parse_ipv4(void *l3, void *data_end, struct baton_flow_key *key)
{
	struct iphdr *ip = l3;
	void *l4;

	if ((void *)(ip + 1) > data_end || ip->ihl < BATON_IPV4_IHL_MIN)
		return BATON_PARSE_NOT_TCP;
	/* ihl counts 32-bit words and covers any IP options. */
	l4 = l3 + ip->ihl * sizeof(__u32);

	if (ip->protocol == IPPROTO_ICMP) {
		/* A piece of a fragmented error goes to the kernel, every piece alike: a later piece
		 * has no ICMP header to read, and steering the first one alone would leave both nodes
		 * with half a datagram. Errors are small (at most 576 bytes, RFC 1812) and seldom cut. */
		if (ip->frag_off & bpf_htons(BATON_IPV4_MORE_FRAGMENTS | BATON_IPV4_FRAG_OFFSET))
			return BATON_PARSE_NOT_TCP;
		return baton_parse_icmp4(l4, data_end, key);
	}
	if (ip->protocol != IPPROTO_TCP)
		return BATON_PARSE_NOT_TCP;
	if (ip->frag_off & bpf_htons(BATON_IPV4_FRAG_OFFSET))
		return BATON_PARSE_FRAGMENT;

	key->family = BATON_FAMILY_IPV4;
	key->client_addr4 = ip->saddr;
	key->vip_addr4 = ip->daddr;
	return baton_parse_tcp(l4, data_end, key);
}

/* ICMPv6 types 1 to 4 (destination unreachable, packet too big, time exceeded, parameter
 * problem) are the errors that quote the packet they are about (RFC 4443); 128 and up are
 * informational (echo, neighbour discovery, MLD), never about a flow. */
static __always_inline int baton_parse_icmp6(void *l4, void *data_end, struct baton_flow_key *key)
{
	struct baton_icmp_hdr *icmp = l4;
	struct ipv6hdr *quoted = (void *)(icmp + 1);

	if ((void *)(quoted + 1) > data_end)
		return BATON_PARSE_NOT_TCP;
	if (icmp->type < ICMPV6_DEST_UNREACH || icmp->type > ICMPV6_PARAMPROB)
		return BATON_PARSE_NOT_TCP;
	/* TCP right after the quoted header only. A quoted fragment header is passed, not read:
	 * the serving node's TCP never sends an IPv6 fragment (ip6_xmit refuses a segment larger
	 * than the route's MTU rather than cut it), so an error quoting one is about no flow of ours. */
	if (quoted->nexthdr != IPPROTO_TCP)
		return BATON_PARSE_NOT_TCP;

	key->family = BATON_FAMILY_IPV6;
	__builtin_memcpy(key->client_addr6, &quoted->daddr, BATON_ADDR_LEN);
	__builtin_memcpy(key->vip_addr6, &quoted->saddr, BATON_ADDR_LEN);
	return baton_parse_quote(quoted + 1, data_end, key);
}

static __always_inline int baton_parse_ipv6(void *l3, void *data_end, struct baton_flow_key *key)
{
	struct ipv6hdr *ip6 = l3;
	void *l4 = ip6 + 1;
	__u8 nexthdr;

	if (l4 > data_end)
		return BATON_PARSE_NOT_TCP;
	nexthdr = ip6->nexthdr;

	/* An error right after the fixed header only. One in fragments goes to the kernel, every
	 * piece (the fragment header's test below wants TCP), as for IPv4; an ICMPv6 error fits in
	 * 1280 bytes (RFC 4443), the minimum MTU, so a sender never has to cut one. */
	if (nexthdr == IPPROTO_ICMPV6)
		return baton_parse_icmp6(l4, data_end, key);

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
