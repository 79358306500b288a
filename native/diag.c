/*
 * Baton native: where the kernel is with one TCP connection (sock_diag, NETLINK_SOCK_DIAG), so the
 * node serving a transferred connection can tell its distributor when TCP, not the application,
 * is done with the 4-tuple. An application's close only starts TCP's closing handshake; the
 * client's last packets (a retransmitted FIN, the final ACK) still need the route until then.
 */
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "diag.h"

/* One netlink socket per process, opened on first use in the caller's network namespace (batond
 * never changes namespace). Replies are matched by sequence number: one left over from a call
 * that gave up on its receive timeout is skipped. */
static int diag_fd = -1;
static uint32_t diag_seq;

static int diag_socket(void)
{
	struct timeval tv = { .tv_sec = 1 };

	if (diag_fd >= 0)
		return diag_fd;
	diag_fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (diag_fd < 0)
		return -errno;
	if (setsockopt(diag_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))) {
		int err = -errno;

		close(diag_fd);
		diag_fd = -1;
		return err;
	}
	return diag_fd;
}

static void diag_reset(void)
{
	if (diag_fd >= 0)
		close(diag_fd);
	diag_fd = -1;
}

int baton_tcp_state(uint8_t family, const uint8_t local_addr[16], uint16_t local_port,
		    const uint8_t remote_addr[16], uint16_t remote_port)
{
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 req;
	} msg;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	union {
		struct nlmsghdr nlh;
		uint8_t bytes[8192];
	} reply;
	const size_t addr_len = family == 4 ? 4 : 16;
	uint32_t seq;
	int fd;

	if (family != 4 && family != 6)
		return -EAFNOSUPPORT;
	fd = diag_socket();
	if (fd < 0)
		return fd;

	memset(&msg, 0, sizeof(msg));
	seq = ++diag_seq;
	msg.nlh.nlmsg_len = sizeof(msg);
	msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	msg.nlh.nlmsg_flags = NLM_F_REQUEST;
	msg.nlh.nlmsg_seq = seq;
	msg.req.sdiag_family = family == 4 ? AF_INET : AF_INET6;
	msg.req.sdiag_protocol = IPPROTO_TCP;
	msg.req.idiag_states = ~0u;
	msg.req.id.idiag_sport = htons(local_port);
	msg.req.id.idiag_dport = htons(remote_port);
	memcpy(msg.req.id.idiag_src, local_addr, addr_len);
	memcpy(msg.req.id.idiag_dst, remote_addr, addr_len);
	msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
	msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;

	if (sendto(fd, &msg, sizeof(msg), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		int err = -errno;

		diag_reset();
		return err;
	}
	for (;;) {
		ssize_t n = recv(fd, &reply, sizeof(reply), 0);
		struct nlmsghdr *h;

		if (n < 0) {
			int err = errno == EAGAIN ? -ETIMEDOUT : -errno;

			if (errno == EINTR)
				continue;
			diag_reset();
			return err;
		}
		for (h = &reply.nlh; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != seq)
				continue;
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = NLMSG_DATA(h);

				/* -ENOENT: no socket holds the 4-tuple, not even in TIME_WAIT. */
				return e->error ? e->error : -EPROTO;
			}
			if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY) {
				const struct inet_diag_msg *m = NLMSG_DATA(h);

				return m->idiag_state;
			}
		}
	}
}

/* Bits 1 (ESTABLISHED) to 12 (NEW_SYN_RECV: request sockets) but 10 (LISTEN). Not ~0: since
 * Linux 6.5 bit 13 (TCP_BOUND_INACTIVE) also asks for sockets bound but never connected. */
#define DUMP_STATES (0x1ffeu & ~(1u << 10))

/* ::ffff:0:0/96, the prefix of an IPv4 address on an AF_INET6 socket. */
static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

_Static_assert(sizeof(struct baton_served) == 24, "struct baton_served is read at fixed offsets");

/*
 * One NLM_F_DUMP of sdiag_family's TCP sockets on fd, counting into *total those whose local
 * address is local_addr (family 4 on an AF_INET6 socket: IPv4-mapped) and writing the first max.
 */
static int dump_family(int fd, uint32_t seq, uint8_t family, uint8_t sdiag_family,
		       const uint8_t local_addr[16], struct baton_served *out, uint32_t max,
		       uint32_t *total)
{
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 req;
	} msg;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	/* 32 KiB: the most the kernel puts in one dump datagram (netlink_dump caps its skb at the
	 * largest receive buffer seen, at most 32 KiB); MSG_TRUNC below catches anything bigger. */
	union {
		struct nlmsghdr nlh;
		uint8_t bytes[32768];
	} reply;
	const int mapped = family == 4 && sdiag_family == AF_INET6;

	memset(&msg, 0, sizeof(msg));
	msg.nlh.nlmsg_len = sizeof(msg);
	msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	msg.nlh.nlmsg_seq = seq;
	msg.req.sdiag_family = sdiag_family;
	msg.req.sdiag_protocol = IPPROTO_TCP;
	msg.req.idiag_states = DUMP_STATES;

	while (sendto(fd, &msg, sizeof(msg), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		if (errno != EINTR)
			return -errno;
	for (;;) {
		ssize_t n = recv(fd, &reply, sizeof(reply), MSG_TRUNC);
		struct nlmsghdr *h;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		}
		/* A truncated datagram lost sockets: better no answer than a short one. */
		if ((size_t)n > sizeof(reply))
			return -EMSGSIZE;
		for (h = &reply.nlh; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			const struct inet_diag_msg *m = NLMSG_DATA(h);
			const uint8_t *src = (const uint8_t *)m->id.idiag_src;
			const uint8_t *dst = (const uint8_t *)m->id.idiag_dst;

			if (h->nlmsg_seq != seq)
				continue;
			if (h->nlmsg_type == NLMSG_DONE) {
				/* The kernel appends the dump's own error, if any, to NLMSG_DONE. */
				if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(int)) && *(const int *)NLMSG_DATA(h) < 0)
					return *(const int *)NLMSG_DATA(h);
				return 0;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = NLMSG_DATA(h);

				return e->error ? e->error : -EPROTO;
			}
			if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(*m)))
				continue;
			if (mapped) {
				if (memcmp(src, v4mapped_prefix, 12) || memcmp(src + 12, local_addr, 4))
					continue;
				src += 12;
				dst += 12;
			} else if (memcmp(src, local_addr, family == 4 ? 4 : 16)) {
				continue;
			}
			if (*total < max) {
				struct baton_served *s = &out[*total];

				memset(s, 0, sizeof(*s));
				memcpy(s->remote_addr, dst, family == 4 ? 4 : 16);
				s->local_port = ntohs(m->id.idiag_sport);
				s->remote_port = ntohs(m->id.idiag_dport);
				s->state = m->idiag_state;
			}
			(*total)++;
		}
	}
}

int baton_tcp_dump(uint8_t family, const uint8_t local_addr[16], struct baton_served *out,
		   uint32_t max)
{
	/* Its own socket, not diag_fd: a dump's replies span many datagrams, which a lookup sharing
	 * the socket would have to skip; and the socket belongs to the caller's namespace now. */
	struct timeval tv = { .tv_sec = 2 };
	uint32_t total = 0;
	int fd, err;

	if (family != 4 && family != 6)
		return -EAFNOSUPPORT;
	fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))) {
		err = -errno;
	} else if (family == 6) {
		err = dump_family(fd, 1, 6, AF_INET6, local_addr, out, max, &total);
	} else {
		/* Dual-stack listeners (Node's default) accept IPv4 clients on AF_INET6 sockets, and the
		 * kernel dumps one socket family at a time. */
		err = dump_family(fd, 1, 4, AF_INET, local_addr, out, max, &total);
		if (!err)
			err = dump_family(fd, 2, 4, AF_INET6, local_addr, out, max, &total);
	}
	close(fd);
	return err ? err : (int)total;
}
