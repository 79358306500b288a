/*
 * Baton native: the kernel's state of one TCP connection, for the node that serves it, and the
 * list of every connection on one local address (sock_diag).
 */
#ifndef BATON_DIAG_H
#define BATON_DIAG_H

#include <stdint.h>

/*
 * The TCP state (the kernel's numbering: 1 ESTABLISHED ... 6 TIME_WAIT, 7 CLOSE, 8 CLOSE_WAIT,
 * 9 LAST_ACK, 11 CLOSING) of the socket holding this 4-tuple in the calling process's network
 * namespace, TIME_WAIT and orphaned FIN_WAIT2 included (those report TIME_WAIT or FIN_WAIT2), or
 * -ENOENT if none does, or -errno. Addresses as in struct baton_tcp_state (network order, IPv4 in
 * the first 4 bytes); ports in host order. One netlink round trip, no allocation.
 */
int baton_tcp_state(uint8_t family, const uint8_t local_addr[16], uint16_t local_port,
		    const uint8_t remote_addr[16], uint16_t remote_port);

/*
 * One socket of baton_tcp_dump: 24 bytes, no implicit padding (TypeScript reads it at fixed
 * offsets). The local address is the one asked for, so it is not repeated.
 */
struct baton_served {
	uint8_t remote_addr[16];  /* network order; IPv4 in the first 4 bytes, the rest 0 */
	uint16_t local_port;      /* host order */
	uint16_t remote_port;     /* host order */
	uint8_t state;            /* the kernel's numbering, as baton_tcp_state returns it */
	uint8_t pad[3];           /* 0 */
};

/*
 * Every TCP socket in the calling thread's network namespace whose local address is local_addr
 * (family 4 or 6, address as in baton_tcp_state), in any state but LISTEN: ESTABLISHED and every
 * closing state, TIME_WAIT and orphaned FIN_WAIT2 included; request sockets (the server side of a
 * handshake not yet complete) report SYN_RECV. Family 4 includes the IPv4-mapped sockets of
 * dual-stack listeners (AF_INET6, local ::ffff:a.b.c.d), reported as IPv4, as baton_export_begin
 * reports them: that takes a second dump, AF_INET then AF_INET6.
 *
 * Writes the first max matches to out and returns how many matched in all, which may exceed max
 * (the caller retries with a bigger out), or -errno (-ETIMEDOUT: the kernel sent nothing for 2 s).
 * A dump is not a snapshot: a socket opened or closed during it may be missed, or in rare cases
 * reported twice. Opens its own netlink socket and closes it before returning; no allocation.
 */
int baton_tcp_dump(uint8_t family, const uint8_t local_addr[16], struct baton_served *out,
		   uint32_t max);

#endif
