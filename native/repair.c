/* The call sequences and the state struct are documented in repair.h. */
#define _GNU_SOURCE
#include "repair.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Data can land between the reads of a queue's seq and length; a flood could keep that going,
 * so give up after this many rounds rather than spin inside an FFI call. */
#define STABLE_READ_TRIES 64

/* MAX_TCP_WINDOW in the kernel: the largest value TCP_MAXSEG accepts. */
#define MAXSEG_LIMIT 32767u

/* Slack for skb overhead when a queue is bigger than the new socket's buffer. */
#define BUF_SLACK (256 * 1024)

static __thread const char *last_step = "";

const char *baton_last_step(void)
{
	return last_step;
}

uint32_t baton_abi_version(void)
{
	return BATON_ABI_VERSION;
}

uint32_t baton_state_size(void)
{
	return sizeof(struct baton_tcp_state);
}

/* Records the step and returns -errno; errno must still be the failing call's. */
static int fail(const char *step)
{
	int err = errno ? errno : EIO;

	last_step = step;
	return -err;
}

static int fail_with(const char *step, int err)
{
	last_step = step;
	return -err;
}

static int set_int(int fd, int level, int opt, int val)
{
	return setsockopt(fd, level, opt, &val, sizeof(val));
}

static int get_u32(int fd, int level, int opt, uint32_t *val)
{
	socklen_t len = sizeof(*val);

	return getsockopt(fd, level, opt, val, &len);
}

static int select_queue(int fd, int queue)
{
	return set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, queue);
}

static int sockaddr_to_state(const struct sockaddr_storage *ss, uint8_t *family, uint8_t addr[16],
			     uint16_t *port)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		*family = 4;
		memset(addr, 0, 16);
		memcpy(addr, &sin->sin_addr, 4);
		*port = ntohs(sin->sin_port);
		return 0;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		/* Dual-stack listeners (Node's default) accept IPv4 clients on AF_INET6 sockets;
		 * the connection is IPv4 and the target may well restore it on an AF_INET socket. */
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			*family = 4;
			memset(addr, 0, 16);
			memcpy(addr, &sin6->sin6_addr.s6_addr[12], 4);
		} else {
			*family = 6;
			memcpy(addr, &sin6->sin6_addr, 16);
		}
		*port = ntohs(sin6->sin6_port);
		return 0;
	}
	errno = EAFNOSUPPORT;
	return -1;
}

static socklen_t state_to_sockaddr(uint8_t family, const uint8_t addr[16], uint16_t port,
				   struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (family == 4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		memcpy(&sin->sin_addr, addr, 4);
		return sizeof(*sin);
	}
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons(port);
	memcpy(&sin6->sin6_addr, addr, 16);
	return sizeof(*sin6);
}

static int read_addresses(int fd, struct baton_tcp_state *st)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	uint8_t remote_family;

	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		return fail("getsockname");
	if (sockaddr_to_state(&ss, &st->family, st->local_addr, &st->local_port))
		return fail("getsockname(address family)");
	len = sizeof(ss);
	if (getpeername(fd, (struct sockaddr *)&ss, &len))
		return fail("getpeername");
	if (sockaddr_to_state(&ss, &remote_family, st->remote_addr, &st->remote_port))
		return fail("getpeername(address family)");
	if (remote_family != st->family)
		return fail_with("getpeername(family differs from local)", EAFNOSUPPORT);
	return 0;
}

/*
 * TCP_QUEUE_SEQ is the seq after the queue. Data arriving between the reads would pair a new
 * seq with an old length (the restored rcv_nxt would then cover bytes never received), so
 * repeat until the seq is the same before and after the length.
 */
static int read_queue(int fd, int queue, uint32_t *first_seq, uint32_t *len, uint32_t *unsent)
{
	const int is_recv = queue == TCP_RECV_QUEUE;
	uint32_t seq_before, seq_after;
	int qlen, nsd = 0;

	if (select_queue(fd, queue))
		return fail(is_recv ? "TCP_REPAIR_QUEUE(recv)" : "TCP_REPAIR_QUEUE(send)");
	for (int i = 0; i < STABLE_READ_TRIES; i++) {
		if (get_u32(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq_before))
			return fail(is_recv ? "TCP_QUEUE_SEQ(recv)" : "TCP_QUEUE_SEQ(send)");
		if (ioctl(fd, is_recv ? SIOCINQ : SIOCOUTQ, &qlen))
			return fail(is_recv ? "SIOCINQ" : "SIOCOUTQ");
		if (!is_recv && ioctl(fd, SIOCOUTQNSD, &nsd))
			return fail("SIOCOUTQNSD");
		if (get_u32(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq_after))
			return fail(is_recv ? "TCP_QUEUE_SEQ(recv)" : "TCP_QUEUE_SEQ(send)");
		if (seq_before == seq_after) {
			*first_seq = seq_after - (uint32_t)qlen;
			*len = (uint32_t)qlen;
			if (unsent)
				*unsent = (uint32_t)nsd;
			return 0;
		}
	}
	return fail_with(is_recv ? "TCP_QUEUE_SEQ(recv, never stable)"
				 : "TCP_QUEUE_SEQ(send, never stable)",
			 EAGAIN);
}

static int read_options(int fd, struct baton_tcp_state *st)
{
	struct tcp_info ti;
	struct tcp_repair_window win;
	socklen_t len = sizeof(ti);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
		return fail("TCP_INFO");
	if (ti.tcpi_state != TCP_ESTABLISHED)
		return fail_with("TCP_INFO(state is not ESTABLISHED)", ENOTCONN);
	st->options = ti.tcpi_options & (BATON_OPT_TIMESTAMPS | BATON_OPT_SACK | BATON_OPT_WSCALE);
	if (st->options & BATON_OPT_WSCALE) {
		st->snd_wscale = ti.tcpi_snd_wscale;
		st->rcv_wscale = ti.tcpi_rcv_wscale;
	}
	/* In repair mode TCP_MAXSEG reports the peer's MSS clamp, the value the target needs. */
	if (get_u32(fd, IPPROTO_TCP, TCP_MAXSEG, &st->mss))
		return fail("TCP_MAXSEG");
	if (get_u32(fd, IPPROTO_TCP, TCP_TIMESTAMP, &st->timestamp))
		return fail("TCP_TIMESTAMP");
	len = sizeof(win);
	if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, &len))
		return fail("TCP_REPAIR_WINDOW");
	st->snd_wl1 = win.snd_wl1;
	st->snd_wnd = win.snd_wnd;
	st->max_window = win.max_window;
	st->rcv_wnd = win.rcv_wnd;
	st->rcv_wup = win.rcv_wup;
	return 0;
}

/* Leaving repair mode resets the socket's SO_REUSEADDR to off; an established socket without
 * it makes the application's next bind of that port (a listener restart) fail with
 * EADDRINUSE. Accepted sockets carry the listener's SO_REUSEADDR, so put it back. */
static int leave_repair(int fd)
{
	if (select_queue(fd, TCP_NO_QUEUE))
		return fail("TCP_REPAIR_QUEUE(none)");
	if (set_int(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF))
		return fail("TCP_REPAIR(off)");
	if (set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1))
		return fail("SO_REUSEADDR");
	return 0;
}

int baton_export_begin(int fd, struct baton_tcp_state *st)
{
	int ret;

	memset(st, 0, sizeof(*st));
	if (set_int(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON))
		return fail("TCP_REPAIR(on)");
	ret = read_addresses(fd, st);
	if (!ret)
		ret = read_queue(fd, TCP_RECV_QUEUE, &st->recv_seq, &st->recv_len, NULL);
	if (!ret)
		ret = read_queue(fd, TCP_SEND_QUEUE, &st->send_seq, &st->send_len, &st->unsent_len);
	/* With the send queue selected, an incoming ACK that opens the window would have the
	 * kernel mark unsent data as sent without transmitting it. */
	if (!ret && select_queue(fd, TCP_NO_QUEUE))
		ret = fail("TCP_REPAIR_QUEUE(none)");
	if (!ret)
		ret = read_options(fd, st);
	if (ret) {
		const char *step = last_step;

		leave_repair(fd);
		last_step = step;
	}
	return ret;
}

static ssize_t peek(int fd, void *buf, uint32_t len)
{
	return recv(fd, buf, len, MSG_PEEK | MSG_DONTWAIT);
}

int baton_export_queues(int fd, struct baton_tcp_state *st, uint8_t *sendq, uint32_t send_cap,
			uint8_t *recvq, uint32_t recv_cap)
{
	int ret = 0;

	if (st->recv_len > recv_cap)
		return fail_with("check(recv queue buffer big enough)", ENOBUFS);
	if (st->recv_len) {
		ssize_t n;

		if (select_queue(fd, TCP_RECV_QUEUE))
			return fail("TCP_REPAIR_QUEUE(recv)");
		n = peek(fd, recvq, st->recv_len);
		if (n < 0)
			ret = fail("recv(MSG_PEEK, recv queue)");
		else if ((uint32_t)n != st->recv_len)
			ret = fail_with("recv(MSG_PEEK, recv queue, short)", EIO);
	}
	if (!ret && st->send_len) {
		/* The peek copies whole skbs from the retransmit queue on and returns the total even
		 * when the buffer is full, so its result is the true queue length, which always
		 * ends at write_seq (nothing writes to a socket in repair mode). */
		const uint32_t write_seq = st->send_seq + st->send_len;
		ssize_t n;

		if (select_queue(fd, TCP_SEND_QUEUE))
			return fail("TCP_REPAIR_QUEUE(send)");
		n = peek(fd, sendq, send_cap);
		if (n < 0) {
			ret = fail("recv(MSG_PEEK, send queue)");
		} else {
			st->send_len = (uint32_t)n;
			st->send_seq = write_seq - (uint32_t)n;
			if (st->unsent_len > st->send_len)
				st->unsent_len = st->send_len;
			if ((uint32_t)n > send_cap)
				ret = fail_with("check(send queue buffer big enough)", ENOBUFS);
		}
	}
	if (select_queue(fd, TCP_NO_QUEUE) && !ret)
		ret = fail("TCP_REPAIR_QUEUE(none)");
	return ret;
}

int baton_export_delta(int fd, uint32_t recv_seq, uint32_t recv_len_known, uint8_t *buf,
		       uint32_t cap, uint32_t *delta_len, uint32_t *unsent_len, uint32_t window[5])
{
	struct tcp_repair_window win;
	socklen_t wlen = sizeof(win);
	struct tcp_info ti;
	socklen_t tlen = sizeof(ti);
	uint32_t first_seq, len;
	uint8_t *skip;
	struct iovec iov[2];
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
	ssize_t n;
	int nsd, ret;

	*delta_len = 0;
	ret = read_queue(fd, TCP_RECV_QUEUE, &first_seq, &len, NULL);
	if (ret)
		goto out;
	if (ioctl(fd, SIOCOUTQNSD, &nsd)) {
		ret = fail("SIOCOUTQNSD");
		goto out;
	}
	*unsent_len = (uint32_t)nsd;
	if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, &wlen)) {
		ret = fail("TCP_REPAIR_WINDOW");
		goto out;
	}
	window[0] = win.snd_wl1;
	window[1] = win.snd_wnd;
	window[2] = win.max_window;
	window[3] = win.rcv_wnd;
	window[4] = win.rcv_wup;
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen)) {
		ret = fail("TCP_INFO");
		goto out;
	}
	if (ti.tcpi_state != TCP_ESTABLISHED) {
		ret = fail_with("TCP_INFO(peer closed since the snapshot)", ENOTCONN);
		goto out;
	}
	if (first_seq != recv_seq || len < recv_len_known) {
		ret = fail_with("check(recv queue still starts at the snapshot)", ESTALE);
		goto out;
	}
	*delta_len = len - recv_len_known;
	if (*delta_len == 0)
		goto out;
	if (*delta_len > cap) {
		ret = fail_with("check(delta buffer big enough)", ENOBUFS);
		goto out;
	}
	/* A peek always starts at the queue head; the known part goes to a scratch buffer. */
	skip = malloc(recv_len_known ? recv_len_known : 1);
	if (!skip) {
		ret = fail("malloc");
		goto out;
	}
	iov[0] = (struct iovec){ skip, recv_len_known };
	iov[1] = (struct iovec){ buf, *delta_len };
	n = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT);
	if (n < 0)
		ret = fail("recvmsg(MSG_PEEK, recv queue)");
	else if ((uint32_t)n != len)
		ret = fail_with("recvmsg(MSG_PEEK, recv queue, short)", EIO);
	free(skip);
out:
	if (select_queue(fd, TCP_NO_QUEUE) && !ret)
		ret = fail("TCP_REPAIR_QUEUE(none)");
	return ret;
}

int baton_repair_off(int fd)
{
	return leave_repair(fd);
}

int baton_go_live(int fd, const uint32_t *timestamp)
{
	/* Only settable in repair mode. */
	if (timestamp && set_int(fd, IPPROTO_TCP, TCP_TIMESTAMP, (int)*timestamp))
		return fail("TCP_TIMESTAMP");
	return leave_repair(fd);
}

int baton_timestamp(int fd, uint32_t *timestamp)
{
	if (get_u32(fd, IPPROTO_TCP, TCP_TIMESTAMP, timestamp))
		return fail("TCP_TIMESTAMP");
	return 0;
}

int baton_quiet_clock(int fd, uint32_t rcv_nxt, uint32_t *timestamp)
{
	struct tcp_repair_window win;
	socklen_t len = sizeof(win);
	int outq = 0, keepalive = 0;
	socklen_t klen = sizeof(keepalive);

	if (ioctl(fd, SIOCOUTQ, &outq))
		return fail("SIOCOUTQ");
	if (outq)
		return -EBUSY;
	if (getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &keepalive, &klen))
		return fail("SO_KEEPALIVE");
	if (keepalive)
		return -EBUSY;
	if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, &len))
		return fail("TCP_REPAIR_WINDOW");
	if (win.rcv_wup != rcv_nxt) {
		/* A delayed ACK is due: send it now rather than have its timer stamp a later clock. */
		if (set_int(fd, IPPROTO_TCP, TCP_QUICKACK, 1))
			return fail("TCP_QUICKACK");
		len = sizeof(win);
		if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, &len))
			return fail("TCP_REPAIR_WINDOW");
		if (win.rcv_wup != rcv_nxt)
			return -EBUSY;
	}
	return baton_timestamp(fd, timestamp);
}

/*
 * Writes into a queue of a socket in repair mode. The new socket's buffers start at the
 * defaults while the exported queue may have filled an autotuned buffer many times larger:
 * the kernel then refuses (send: EAGAIN, receive: ENOMEM), so raise the limit past what is
 * left and go on. Autotuning of that buffer is lost, only on such connections.
 */
static int write_queue(int fd, int queue, const uint8_t *buf, uint32_t len)
{
	const int is_recv = queue == TCP_RECV_QUEUE;
	int grown = 0;

	if (!len)
		return 0;
	if (select_queue(fd, queue))
		return fail(is_recv ? "TCP_REPAIR_QUEUE(recv)" : "TCP_REPAIR_QUEUE(send)");
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n > 0) {
			buf += n;
			len -= (uint32_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == ENOMEM) && !grown) {
			int cur = 0;
			socklen_t clen = sizeof(cur);
			const int opt = is_recv ? SO_RCVBUF : SO_SNDBUF;
			const int force = is_recv ? SO_RCVBUFFORCE : SO_SNDBUFFORCE;
			uint64_t want;

			if (getsockopt(fd, SOL_SOCKET, opt, &cur, &clen))
				return fail(is_recv ? "SO_RCVBUF" : "SO_SNDBUF");
			/* The kernel doubles the value; cur is already the doubled one. */
			want = (uint64_t)cur / 2 + len + BUF_SLACK;
			if (want > INT32_MAX / 2)
				want = INT32_MAX / 2;
			if (set_int(fd, SOL_SOCKET, force, (int)want))
				return fail(is_recv ? "SO_RCVBUFFORCE" : "SO_SNDBUFFORCE");
			grown = 1;
			continue;
		}
		if (n == 0)
			errno = EIO;
		return fail(is_recv ? "send(recv queue)" : "send(send queue)");
	}
	return 0;
}

/*
 * The order matters, each step for a reason (docs/native.md, "Socket option order on import"):
 * queue seqs while still closed; MSS before connect; options after it (EPERM before) and before
 * any queue data; the window after the receive queue (its rcv_wup check).
 */
int baton_import(const struct baton_tcp_state *st, const uint8_t *sendq, const uint8_t *recvq,
		 int *fd_out)
{
	struct sockaddr_storage ss;
	socklen_t slen;
	struct tcp_repair_opt opts[4];
	struct tcp_repair_window win = {
		.snd_wl1 = st->snd_wl1,
		.snd_wnd = st->snd_wnd,
		.max_window = st->max_window,
		.rcv_wnd = st->rcv_wnd,
		.rcv_wup = st->rcv_wup,
	};
	int nopts = 0, fd, ret;

	*fd_out = -1;
	if (st->family != 4 && st->family != 6)
		return fail_with("check(state family is 4 or 6)", EAFNOSUPPORT);
	if (st->unsent_len > st->send_len)
		return fail_with("check(state unsent_len <= send_len)", EINVAL);

	fd = socket(st->family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
	if (fd < 0)
		return fail("socket");

#define STEP(name, call)                  \
	do {                              \
		if ((call) < 0) {         \
			ret = fail(name); \
			goto err;         \
		}                         \
	} while (0)

	/* Repair mode makes the bind force-reuse the port: it binds next to the application's
	 * LISTEN socket and next to other restored connections. SO_REUSEADDR set afterwards
	 * would cancel that, set before it is overridden; so none is set (see docs/native.md). */
	STEP("TCP_REPAIR(on)", set_int(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON));

	slen = state_to_sockaddr(st->family, st->local_addr, st->local_port, &ss);
	STEP("bind(local)", bind(fd, (struct sockaddr *)&ss, slen));

	STEP("TCP_REPAIR_QUEUE(recv)", select_queue(fd, TCP_RECV_QUEUE));
	STEP("TCP_QUEUE_SEQ(recv)", set_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, (int)st->recv_seq));
	STEP("TCP_REPAIR_QUEUE(send)", select_queue(fd, TCP_SEND_QUEUE));
	STEP("TCP_QUEUE_SEQ(send)", set_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, (int)st->send_seq));
	STEP("TCP_REPAIR_QUEUE(none)", select_queue(fd, TCP_NO_QUEUE));
	/* Without it the connect picks a 524-byte MSS that TCP_REPAIR_OPTIONS never corrects.
	 * TCP_MAXSEG refuses values above 32767, which loopback's MSS (65483) is; the repair
	 * option below sets the full clamp. */
	STEP("TCP_MAXSEG", set_int(fd, IPPROTO_TCP, TCP_MAXSEG,
				   (int)(st->mss < MAXSEG_LIMIT ? st->mss : MAXSEG_LIMIT)));

	slen = state_to_sockaddr(st->family, st->remote_addr, st->remote_port, &ss);
	STEP("connect(remote)", connect(fd, (struct sockaddr *)&ss, slen));

	opts[nopts++] = (struct tcp_repair_opt){ TCPOPT_MAXSEG, st->mss };
	/* Always sent: left out, the socket keeps the receive scale its repair connect picked and
	 * advertises a window of a few dozen bytes to a peer that does not scale. */
	opts[nopts++] = (struct tcp_repair_opt){
		TCPOPT_WINDOW,
		(st->options & BATON_OPT_WSCALE) ? (uint32_t)st->snd_wscale | (uint32_t)st->rcv_wscale << 16 : 0,
	};
	if (st->options & BATON_OPT_SACK)
		opts[nopts++] = (struct tcp_repair_opt){ TCPOPT_SACK_PERMITTED, 0 };
	if (st->options & BATON_OPT_TIMESTAMPS)
		opts[nopts++] = (struct tcp_repair_opt){ TCPOPT_TIMESTAMP, 0 };
	STEP("TCP_REPAIR_OPTIONS",
	     setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts, (socklen_t)(nopts * sizeof(opts[0]))));
	/* Without it the peer drops every segment as a PAWS failure. The snapshot's clock is only a
	 * start: the old socket may send later stamps until it is closed, so baton_go_live sets the
	 * clock it had then. */
	if (st->options & BATON_OPT_TIMESTAMPS)
		STEP("TCP_TIMESTAMP", set_int(fd, IPPROTO_TCP, TCP_TIMESTAMP, (int)st->timestamp));

	ret = write_queue(fd, TCP_SEND_QUEUE, sendq, st->send_len - st->unsent_len);
	if (ret)
		goto err;
	ret = write_queue(fd, TCP_RECV_QUEUE, recvq, st->recv_len);
	if (ret)
		goto err;
	STEP("TCP_REPAIR_QUEUE(none)", select_queue(fd, TCP_NO_QUEUE));
	STEP("TCP_REPAIR_WINDOW", setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, sizeof(win)));
#undef STEP

	*fd_out = fd;
	return 0;
err:
	/* Still in repair mode (or never connected): closing sends nothing. */
	{
		int saved = errno;

		close(fd);
		errno = saved;
	}
	return ret;
}

int baton_import_append_recv(int fd, const uint8_t *buf, uint32_t len)
{
	int ret = write_queue(fd, TCP_RECV_QUEUE, buf, len);

	if (select_queue(fd, TCP_NO_QUEUE) && !ret)
		ret = fail("TCP_REPAIR_QUEUE(none)");
	return ret;
}

int baton_import_append_sent(int fd, const uint8_t *buf, uint32_t len)
{
	int ret = write_queue(fd, TCP_SEND_QUEUE, buf, len);

	/* Left selected, the send queue makes the kernel count anything it pushes as sent
	 * without transmitting it. */
	if (select_queue(fd, TCP_NO_QUEUE) && !ret)
		ret = fail("TCP_REPAIR_QUEUE(none)");
	return ret;
}

int baton_import_set_window(int fd, const uint32_t window[5])
{
	struct tcp_repair_window win = {
		.snd_wl1 = window[0],
		.snd_wnd = window[1],
		.max_window = window[2],
		.rcv_wnd = window[3],
		.rcv_wup = window[4],
	};

	if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, sizeof(win)))
		return fail("TCP_REPAIR_WINDOW");
	return 0;
}

int baton_close_silently(int fd)
{
	if (set_int(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON))
		return fail("TCP_REPAIR(on)");
	if (close(fd))
		return fail("close");
	return 0;
}

int baton_set_idle(int fd, const struct baton_idle *idle)
{
	if (set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, (int)idle->user_timeout_ms))
		return fail("TCP_USER_TIMEOUT");
	if (!idle->keepalive_idle_s)
		return set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 0) ? fail("SO_KEEPALIVE") : 0;
	if (set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, (int)idle->keepalive_idle_s))
		return fail("TCP_KEEPIDLE");
	if (set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, (int)idle->keepalive_intvl_s))
		return fail("TCP_KEEPINTVL");
	if (set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, (int)idle->keepalive_probes))
		return fail("TCP_KEEPCNT");
	if (set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1))
		return fail("SO_KEEPALIVE");
	return 0;
}

int baton_dup(int fd)
{
	int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);

	return nfd < 0 ? fail("dup") : nfd;
}

int baton_socket_check(int fd, struct baton_socket_info *out)
{
	struct sockaddr_storage ss;
	struct tcp_info ti;
	socklen_t len;
	uint8_t remote_family;

	memset(out, 0, sizeof(*out));
	out->tcp_state = -1;
	len = sizeof(out->domain);
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &out->domain, &len))
		return fail("SO_DOMAIN");
	len = sizeof(out->type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &out->type, &len))
		return fail("SO_TYPE");
	len = sizeof(out->protocol);
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &out->protocol, &len))
		return fail("SO_PROTOCOL");
	if (out->domain != AF_INET && out->domain != AF_INET6)
		return 0;
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		return fail("getsockname");
	if (sockaddr_to_state(&ss, &out->family, out->local_addr, &out->local_port))
		return fail("getsockname(address family)");
	len = sizeof(ss);
	if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0) {
		if (sockaddr_to_state(&ss, &remote_family, out->remote_addr, &out->remote_port))
			return fail("getpeername(address family)");
		out->connected = 1;
	} else if (errno != ENOTCONN) {
		return fail("getpeername");
	}
	if (out->type == SOCK_STREAM && out->protocol == IPPROTO_TCP) {
		len = sizeof(ti);
		if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
			return fail("TCP_INFO");
		out->tcp_state = ti.tcpi_state;
	}
	return 0;
}
