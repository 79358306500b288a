/*
 * Baton native: the kernel's state of one TCP connection, for the node that serves it.
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

#endif
