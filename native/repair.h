/*
 * Baton native repair library: move one established TCP connection out of a socket and into a
 * new one with TCP_REPAIR, one whole step per call (one FFI crossing each; the syscalls cost
 * more than the crossing, so the call count is what matters).
 *
 * Export, on the node that owns the socket (no reader may touch the fd meanwhile: Node must
 * have stopped the handle's reads, or the kernel hands bytes to libuv instead of the queue):
 *
 *   baton_export_begin(fd, &st)        TCP_REPAIR on: the socket no longer answers what it
 *                                      receives (but still sends queued data if the window
 *                                      opens). Reads seqs, lengths, options, window.
 *   allocate st.send_len + st.recv_len bytes
 *   baton_export_queues(fd, &st, ...)  peeks both queues (-ENOBUFS: st.send_len grew, retry)
 *   ...import on the target, freeze the flow in XDP...
 *   baton_export_delta(fd, ...)        bytes that reached the receive queue after the snapshot,
 *                                      how much of the send queue is still unsent, the window
 *   baton_close_silently(fd)           no FIN, no RST
 *     or baton_repair_off(fd)          rollback: the original socket carries on
 *
 * Import, on the target (in the network namespace that owns the local address):
 *
 *   baton_import(&st, sendq, recvq, &fd)   new socket, ESTABLISHED, still in repair mode
 *   baton_import_append_recv(fd, delta)    the export delta, while still in repair mode
 *   baton_import_append_sent(fd, ...)      the part of the unsent tail the old socket
 *                                          transmitted after the snapshot
 *   ...route the flow to this node, close the old socket (baton_timestamp just before)...
 *   baton_go_live(fd, &timestamp)          TCP_REPAIR off: the kernel sends a window probe
 *   write the unsent tail of the send queue through the normal socket API
 *
 * Every call returns 0 (baton_dup: the new fd) or -errno. On failure baton_last_step()
 * names the kernel call that failed, e.g. "TCP_REPAIR_QUEUE(recv)"; it is thread-local and
 * valid until the next failing call on the same thread. Needs CAP_NET_ADMIN.
 */
#ifndef BATON_REPAIR_H
#define BATON_REPAIR_H

#include <stdint.h>

#define BATON_ABI_VERSION 10

/* tcpi_options bits, kept as the kernel reports them. */
#define BATON_OPT_TIMESTAMPS 1u
#define BATON_OPT_SACK 2u
#define BATON_OPT_WSCALE 4u

/*
 * What a TCP connection is, as far as moving it goes. Plain and fixed-size: TypeScript
 * mirrors it field by field. Sequence numbers are mod 2^32 and always name the FIRST byte of
 * a queue (the kernel's TCP_QUEUE_SEQ names the byte after it).
 */
struct baton_tcp_state {
	uint8_t family;           /* 4 or 6; an IPv4-mapped IPv6 socket exports as 4 */
	uint8_t options;          /* BATON_OPT_*, only what both ends negotiated */
	uint8_t snd_wscale;       /* shift the peer applies to the windows it sends us */
	uint8_t rcv_wscale;       /* shift we apply to the windows we send */
	uint16_t local_port;      /* host byte order */
	uint16_t remote_port;
	uint8_t local_addr[16];   /* network byte order; IPv4 uses the first 4 bytes */
	uint8_t remote_addr[16];
	uint32_t send_seq;        /* first byte of the send queue (snd_una at snapshot) */
	uint32_t send_len;        /* whole send queue: sent-but-unacked, then unsent */
	uint32_t unsent_len;      /* trailing bytes of the send queue never transmitted */
	uint32_t recv_seq;        /* first byte of the receive queue (not yet read by the app) */
	uint32_t recv_len;
	uint32_t mss;             /* the peer's MSS clamp */
	uint32_t timestamp;       /* TCP_TIMESTAMP clock at export (see baton_go_live) */
	uint32_t snd_wl1;         /* TCP_REPAIR_WINDOW, as the kernel names them */
	uint32_t snd_wnd;
	uint32_t max_window;
	uint32_t rcv_wnd;
	uint32_t rcv_wup;
};

/* Trivial calls: the TypeScript side checks it loaded the library it was written for. */
uint32_t baton_abi_version(void);
uint32_t baton_state_size(void);
const char *baton_last_step(void);

/*
 * Turns TCP_REPAIR on and fills st (everything but the queue contents). The seq and length of
 * each queue are re-read until two reads of the seq agree, since segments keep arriving.
 * -ENOTCONN unless ESTABLISHED. On failure repair mode is turned off again.
 *
 * Repair mode does not stop transmission: if the peer opens its window, the kernel still
 * sends from the unsent tail. Until the flow is frozen, st->unsent_len can only shrink; the
 * delta call reports where it ended.
 */
int baton_export_begin(int fd, struct baton_tcp_state *st);

/*
 * Peeks the queues into sendq (send_cap bytes) and recvq (recv_cap bytes). The send queue is
 * re-measured by the peek itself, which is what the target must retransmit: ACKs that arrived
 * since begin shrink it, and a partly acknowledged segment is only peekable whole, so st's
 * send_seq/send_len are updated to match the bytes copied. -ENOBUFS if a buffer is smaller
 * than st now says (reallocate, call again). The socket stays in repair mode either way.
 */
int baton_export_queues(int fd, struct baton_tcp_state *st, uint8_t *sendq, uint32_t send_cap,
			uint8_t *recvq, uint32_t recv_cap);

/*
 * Copies the receive-queue bytes beyond the first recv_len_known (those that arrived after
 * the snapshot) into buf and sets *delta_len, window to the socket's TCP_REPAIR_WINDOW now (for
 * baton_import_set_window), and *unsent_len to what is still unsent
 * now (at most the snapshot's; the difference went out meanwhile and must be appended to the
 * target's sent part). -ENOBUFS with *delta_len set if cap is too small; -ESTALE if the queue
 * no longer starts at recv_seq (someone read the socket); -ENOTCONN if the peer's FIN arrived
 * meanwhile (a FIN cannot be carried over).
 */
int baton_export_delta(int fd, uint32_t recv_seq, uint32_t recv_len_known, uint8_t *buf,
		       uint32_t cap, uint32_t *delta_len, uint32_t *unsent_len, uint32_t window[5]);

/* Rollback: TCP_REPAIR off on the original socket; bytes that arrived meanwhile are kept. */
int baton_repair_off(int fd);

/*
 * Builds a new socket holding st's connection, in the calling thread's network namespace,
 * left in repair mode. sendq holds st->send_len bytes of which the first
 * send_len - unsent_len are written as already sent; the unsent tail is the caller's to write
 * after baton_go_live. recvq holds st->recv_len bytes starting at st->recv_seq: to deliver
 * bytes the application already read before the rest, put them in front and set
 * recv_seq = exported recv_seq - their length (mod 2^32), recv_len = the total.
 * The local address must be configured here; binding next to a LISTEN socket on the same
 * address and port, and next to other restored connections, is expected.
 * On failure no socket is left behind.
 */
int baton_import(const struct baton_tcp_state *st, const uint8_t *sendq, const uint8_t *recvq,
		 int *fd_out);

/* Appends bytes to the receive queue of a socket still in repair mode (the export delta). */
int baton_import_append_recv(int fd, const uint8_t *buf, uint32_t len);

/* Appends bytes to the sent part of the send queue of a socket still in repair mode: the
 * start of the unsent tail, for as many bytes as the old socket transmitted after the
 * snapshot. They count as in flight (retransmitted if the peer never acknowledges them). */
int baton_import_append_sent(int fd, const uint8_t *buf, uint32_t len);

/*
 * TCP_REPAIR_WINDOW on a socket still in repair mode, after the queues are complete: the window
 * the old socket saw at the freeze (baton_export_delta's window: snd_wl1, snd_wnd, max_window,
 * rcv_wnd, rcv_wup). The snapshot's window may be stale; if it says the client's window is shut,
 * the reinstated socket waits for a window update, and the answer to its window probe can be
 * rate-limited away by the client (one per 500 ms), costing a retransmission timeout.
 */
int baton_import_set_window(int fd, const uint32_t window[5]);

/*
 * TCP_REPAIR off on an imported socket: the kernel sends a window probe, the peer answers.
 * timestamp (NULL: leave the clock alone): the old socket's TCP_TIMESTAMP clock when it was
 * closed (baton_timestamp). Repair mode does not silence a socket: it still sends when the peer
 * opens its window and when its timers fire, stamped with a clock that runs on after the
 * snapshot. Restarting from that last clock keeps every stamp the target sends at or above the
 * last one the peer saw (PAWS drops older ones) without running ahead of real time (the peer
 * echoes the stamps, and the target's RTT samples are "now − echo": a clock set ahead inflates
 * them by as much).
 */
int baton_go_live(int fd, const uint32_t *timestamp);

/* The socket's TCP_TIMESTAMP clock now (ms ticks plus its offset). Read it just before the old
 * socket's silent close, for the target's baton_go_live. */
int baton_timestamp(int fd, uint32_t *timestamp);

/*
 * The clock of an old socket in repair mode, taken when it can send nothing more by itself, so
 * that the reading is as final as one taken at its close: nothing in its send queue (SIOCOUTQ 0:
 * no retransmission, loss probe or zero-window probe can fire), no keepalive, and everything it
 * received acknowledged (rcv_wup == rcv_nxt; a pending delayed ACK is sent now with TCP_QUICKACK,
 * which repair mode does not stop). Call it once the flow no longer reaches this socket (frozen
 * or routed away), with rcv_nxt = the receive queue's start sequence plus its length.
 * 0 and *timestamp; -EBUSY when the socket might still send (read the clock at its close
 * instead); another -errno on failure (baton_last_step).
 */
int baton_quiet_clock(int fd, uint32_t rcv_nxt, uint32_t *timestamp);

/*
 * How long a reinstated connection may sit idle or stuck before its kernel gives up on it: the
 * target node sets these on every socket it reinstates, before baton_go_live, so a client that
 * vanished after its handoff cannot hold a routing-table entry and a socket for ever. A zero
 * turns its part off (keepalive_idle_s 0: no keepalive at all).
 */
struct baton_idle {
	uint32_t keepalive_idle_s;   /* TCP_KEEPIDLE: silence before the first probe; 0: SO_KEEPALIVE off */
	uint32_t keepalive_intvl_s;  /* TCP_KEEPINTVL: between probes */
	uint32_t keepalive_probes;   /* TCP_KEEPCNT: unanswered probes before the connection is dropped */
	uint32_t user_timeout_ms;    /* TCP_USER_TIMEOUT: the longest data may stay unacknowledged; 0: the kernel's */
};

/* Sets idle's bounds on fd (in repair mode or not: these options only set values and timers). 0 or -errno. */
int baton_set_idle(int fd, const struct baton_idle *idle);

/* Repair mode on (if not already), then close: the peer sees nothing. If repair mode cannot
 * be turned on the fd is NOT closed, since a plain close would send a FIN or RST. */
int baton_close_silently(int fd);

/* dup(), close-on-exec: take a socket away from an owner (Node) that is about to close it. */
int baton_dup(int fd);

/*
 * What a descriptor is, read without changing it: what batond checks before it puts a socket an
 * application passed it into repair mode. The kernel's numbers, plain and fixed-size.
 */
struct baton_socket_info {
	int32_t domain;           /* SO_DOMAIN: AF_INET, AF_INET6, AF_UNIX, ... */
	int32_t type;             /* SO_TYPE: SOCK_STREAM, SOCK_DGRAM, ... */
	int32_t protocol;         /* SO_PROTOCOL: IPPROTO_TCP, IPPROTO_UDP, 0 for Unix, ... */
	int32_t tcp_state;        /* TCP_INFO tcpi_state (1 ESTABLISHED, 8 CLOSE_WAIT, 10 LISTEN,
				   * ...) for a TCP socket; -1 for any other */
	uint8_t family;           /* 4 or 6 for AF_INET/AF_INET6 (an IPv4-mapped address is 4); 0 else */
	uint8_t connected;        /* 1 when getpeername names a peer */
	uint16_t local_port;      /* getsockname, host byte order */
	uint16_t remote_port;     /* getpeername, when connected */
	uint8_t local_addr[16];   /* network byte order; IPv4 uses the first 4 bytes */
	uint8_t remote_addr[16];
};

/*
 * Fills out for fd. Addresses and ports only for AF_INET/AF_INET6 sockets, the TCP state only
 * for TCP ones. 0, or -errno: -ENOTSOCK when fd is not a socket, -EBADF when it is not open.
 * Never changes the socket (no option is set, nothing is read from its queues).
 */
int baton_socket_check(int fd, struct baton_socket_info *out);

#endif
