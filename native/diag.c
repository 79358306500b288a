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
