// The reference handoff for `make bench`: the least a handoff can be on this machine, with the same
// kernel steps as Baton's and nothing else, so that BENCHMARKS.md can report Baton's latency, rate
// and CPU per handoff as a ratio to the floor of the lab it runs in.
//
// Two single-threaded epoll processes, no TLS, no JSON, no checks, no logging:
//
//   distributor (the routing node, n1): accepts clients on DVIPA:port and speaks the line
//     protocol's login (HELLO → WHO?, USER → ...). On USER it exports the socket
//     (baton_export_begin + baton_export_queues, native/repair.c), sends the state to the importer
//     over one kept-open TCP connection and, when the importer says it reinstated it, writes the
//     flow's FORWARD entry into Baton's pinned routing table (the steering program on n1 then sends
//     the client's frames to the target), reads the old socket's final clock, closes it silently
//     and tells the importer to go live. The sample is USER read → entry written, the span Baton's
//     handoff() reports (call → route installed).
//   importer (the target node, n2): reinstates each offered socket (baton_import), answers, and on
//     `live` leaves repair mode with the old socket's clock and greets the client ("OK <node>"),
//     as Baton's line target does. When the client closes, it closes and tells the distributor,
//     which marks the entry FINISHED as Baton does (the closing handshake's last frames still
//     reach n2; a later SYN from the same client port reclaims the entry and reaches n1 again).
//
// The same bench client drives it (bench/client.ts handoffs) on another DVIPA port.
//
// usage:
//   ref-handoff importer <listen-ip> <port> <node-name>
//   ref-handoff distributor <dvipa> <port> <importer-ip> <importer-port> <routes-pin> <target-mac> <target-id>
//
// The distributor prints each handoff's µs on SIGUSR1 as one JSON line on stdout
// ({"samplesUs":[...],"failed":N}) and starts a new list; on SIGTERM it deletes every entry it
// wrote and exits.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "repair.h"

// bpf/baton.h's struct baton_flow_key and struct baton_route (that header also defines the BPF
// maps, so user space cannot include it); the asserts pin the same layout.
struct flow_key {
	uint8_t client_addr[16];
	uint8_t vip_addr[16];
	uint16_t client_port; // network byte order
	uint16_t vip_port;
	uint8_t family;
	uint8_t pad[3];
};
struct route {
	uint64_t packets;
	uint64_t bytes;
	uint32_t state;
	uint32_t target_node;
	uint8_t target_mac[6];
	uint8_t pad[2];
};
_Static_assert(sizeof(struct flow_key) == 40, "struct baton_flow_key");
_Static_assert(sizeof(struct route) == 32, "struct baton_route");
#define ROUTE_FORWARD 2
#define ROUTE_FINISHED 4

// One message between the two processes: a header, then len bytes.
enum { MSG_OFFER = 1, MSG_ACCEPT = 2, MSG_LIVE = 3, MSG_CLOSED = 4 };
struct msg_header {
	uint32_t type;
	uint32_t id;
	uint32_t len;
};
struct accept_body {
	int32_t result; // 0, or -errno of baton_import
};
struct live_body {
	uint32_t timestamp;
};

// Connections in flight are kept by id modulo SLOTS: the bench has at most a few hundred open.
#define SLOTS 65536
#define LINE_MAX_LEN 256
// Bound on one message between the two processes (a state and both queues); larger ends the run.
#define MAX_MSG_LEN (64u << 20)
#define MAX_SAMPLES 1000000

static void die(const char *what, int err)
{
	fprintf(stderr, "ref-handoff: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int parse_mac(const char *text, uint8_t mac[6])
{
	return sscanf(text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4], &mac[5]) == 6 ? 0 : -1;
}

static int listen_on(const char *ip, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || inet_pton(AF_INET, ip, &a.sin_addr) != 1)
		die("listen socket", errno);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 1024))
		die("bind/listen", errno);
	return fd;
}

static void no_delay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Blocking writes of whole messages on the link between the two processes: they are small and
// the peer reads continuously, so a full send buffer means the peer is gone.
static void write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			usleep(10);
			continue;
		}
		if (n <= 0)
			die("link write", errno);
		p += n;
		len -= (size_t)n;
	}
}

static void send_msg(int fd, uint32_t type, uint32_t id, const void *a, uint32_t alen, const void *b, uint32_t blen,
		     const void *c, uint32_t clen)
{
	struct msg_header h = { .type = type, .id = id, .len = alen + blen + clen };
	struct iovec iov[4] = { { &h, sizeof(h) }, { (void *)a, alen }, { (void *)b, blen }, { (void *)c, clen } };
	ssize_t want = (ssize_t)(sizeof(h) + h.len);
	ssize_t n = writev(fd, iov, 4);
	if (n == want)
		return;
	// A partial write (rare: a large queue): send the rest byte-exact.
	uint8_t *flat = malloc((size_t)want);
	if (!flat)
		die("malloc", ENOMEM);
	size_t off = 0;
	for (int i = 0; i < 4; i++) {
		memcpy(flat + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	if (n < 0)
		n = 0;
	write_all(fd, flat + n, (size_t)(want - n));
	free(flat);
}

// The link's receive side: a growing buffer, whole messages handed to on_msg.
struct link {
	int fd;
	uint8_t *buf;
	size_t len, cap;
};

static int link_read(struct link *l, void (*on_msg)(const struct msg_header *, const uint8_t *))
{
	for (;;) {
		if (l->cap - l->len < 65536) {
			l->cap = l->cap ? l->cap * 2 : 1 << 20;
			l->buf = realloc(l->buf, l->cap);
			if (!l->buf)
				die("malloc", ENOMEM);
		}
		ssize_t n = read(l->fd, l->buf + l->len, l->cap - l->len);
		if (n < 0 && errno == EAGAIN)
			break;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		l->len += (size_t)n;
	}
	size_t off = 0;
	while (l->len - off >= sizeof(struct msg_header)) {
		struct msg_header h;
		memcpy(&h, l->buf + off, sizeof(h));
		if (h.len > MAX_MSG_LEN)
			die("message longer than the bound", EMSGSIZE);
		if (l->len - off < sizeof(h) + h.len)
			break;
		on_msg(&h, l->buf + off + sizeof(h));
		off += sizeof(h) + h.len;
	}
	memmove(l->buf, l->buf + off, l->len - off);
	l->len -= off;
	return 0;
}

/* ---- importer ---------------------------------------------------------------------------- */

static struct {
	int epfd;
	struct link link;
	const char *node;
	int fds[SLOTS]; // reinstated sockets by id, -1 when none
	uint32_t ids[SLOTS];
} imp;

// epoll data: the link is tagged with UINT64_MAX, client sockets with their id.
#define TAG_LINK UINT64_MAX
#define TAG_LISTEN (UINT64_MAX - 1)
#define TAG_SIGNAL (UINT64_MAX - 2)

static void importer_msg(const struct msg_header *h, const uint8_t *body)
{
	uint32_t slot = h->id % SLOTS;
	if (h->type == MSG_OFFER) {
		struct baton_tcp_state st;
		if (h->len < sizeof(st))
			die("offer shorter than a state", EPROTO);
		memcpy(&st, body, sizeof(st));
		if ((uint64_t)h->len != (uint64_t)sizeof(st) + st.send_len + st.recv_len)
			die("offer length does not match its queues", EPROTO);
		const uint8_t *sendq = body + sizeof(st);
		const uint8_t *recvq = sendq + st.send_len;
		int fd = -1;
		struct accept_body a = { .result = baton_import(&st, sendq, recvq, &fd) };
		if (a.result == 0 && imp.fds[slot] >= 0) {
			close(fd);
			a.result = -EBUSY;
		}
		if (a.result == 0) {
			imp.fds[slot] = fd;
			imp.ids[slot] = h->id;
		}
		send_msg(imp.link.fd, MSG_ACCEPT, h->id, &a, sizeof(a), NULL, 0, NULL, 0);
	} else if (h->type == MSG_LIVE) {
		struct live_body lb;
		if (h->len != sizeof(lb))
			die("live of the wrong length", EPROTO);
		memcpy(&lb, body, sizeof(lb));
		int fd = imp.fds[slot];
		if (fd < 0 || imp.ids[slot] != h->id)
			die("live for an unknown id", EINVAL);
		int rc = baton_go_live(fd, &lb.timestamp);
		if (rc)
			die(baton_last_step(), rc);
		char greeting[LINE_MAX_LEN];
		int n = snprintf(greeting, sizeof(greeting), "OK %s\n", imp.node);
		if (write(fd, greeting, (size_t)n) != n)
			fprintf(stderr, "ref-handoff: greeting id %u: %s\n", h->id, strerror(errno));
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u64 = h->id };
		if (epoll_ctl(imp.epfd, EPOLL_CTL_ADD, fd, &ev))
			die("epoll_ctl client", errno);
	} else {
		die("unknown message from the distributor", EPROTO);
	}
}

static void importer_client(uint32_t id)
{
	uint32_t slot = id % SLOTS;
	int fd = imp.fds[slot];
	char buf[4096];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		; // the client sends nothing after its login; whatever it sends is discarded
	if (n < 0 && errno == EAGAIN)
		return;
	close(fd);
	imp.fds[slot] = -1;
	send_msg(imp.link.fd, MSG_CLOSED, id, NULL, 0, NULL, 0, NULL, 0);
}

static int importer(const char *ip, int port, const char *node)
{
	imp.node = node;
	for (int i = 0; i < SLOTS; i++)
		imp.fds[i] = -1;
	imp.epfd = epoll_create1(EPOLL_CLOEXEC);
	int lfd = listen_on(ip, port);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
	epoll_ctl(imp.epfd, EPOLL_CTL_ADD, lfd, &ev);
	imp.link.fd = -1;
	fprintf(stderr, "ref-handoff importer listening on %s:%d\n", ip, port);
	for (;;) {
		struct epoll_event evs[64];
		int n = epoll_wait(imp.epfd, evs, 64, -1);
		if (n < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;
			if (tag == TAG_LISTEN) {
				int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (fd < 0)
					continue;
				if (imp.link.fd >= 0) { // one distributor at a time
					close(fd);
					continue;
				}
				no_delay(fd);
				imp.link.fd = fd;
				struct epoll_event lev = { .events = EPOLLIN, .data.u64 = TAG_LINK };
				epoll_ctl(imp.epfd, EPOLL_CTL_ADD, fd, &lev);
			} else if (tag == TAG_LINK) {
				if (link_read(&imp.link, importer_msg))
					return 0; // the distributor is gone: so is the benchmark
			} else {
				importer_client((uint32_t)tag);
			}
		}
	}
}

/* ---- distributor ------------------------------------------------------------------------- */

enum { C_FREE = 0, C_LOGIN, C_OFFERED, C_ROUTED };

struct client {
	int phase;
	int fd;
	uint32_t id;
	uint64_t t0;
	struct baton_tcp_state st;
	struct flow_key key;
	char line[LINE_MAX_LEN];
	size_t line_len;
};

static struct {
	int epfd;
	struct link link;
	int routes_fd;
	struct route forward, finished;
	struct client clients[SLOTS];
	struct flow_key *written; // every key this process wrote, deleted at exit
	size_t nwritten, capwritten;
	uint32_t next_id;
	uint32_t *samples;
	size_t nsamples;
	uint32_t failed;
} dis;

static void client_free(struct client *c)
{
	c->phase = C_FREE;
	c->fd = -1;
}

static void client_fail(struct client *c, const char *step, int err)
{
	fprintf(stderr, "ref-handoff: id %u: %s: %s\n", c->id, step, strerror(err < 0 ? -err : err));
	dis.failed++;
	close(c->fd);
	client_free(c);
}

// USER read: export and offer. Nothing else touches the socket (it left epoll).
static void start_handoff(struct client *c)
{
	c->t0 = now_ns();
	epoll_ctl(dis.epfd, EPOLL_CTL_DEL, c->fd, NULL);
	int rc = baton_export_begin(c->fd, &c->st);
	if (rc)
		return client_fail(c, baton_last_step(), rc);
	uint8_t *q = NULL;
	for (;;) {
		free(q);
		q = malloc((size_t)c->st.send_len + c->st.recv_len + 1);
		if (!q)
			die("malloc", ENOMEM);
		rc = baton_export_queues(c->fd, &c->st, q, c->st.send_len, q + c->st.send_len, c->st.recv_len);
		if (rc != -ENOBUFS)
			break;
	}
	if (rc) {
		free(q);
		baton_repair_off(c->fd);
		return client_fail(c, baton_last_step(), rc);
	}
	memset(&c->key, 0, sizeof(c->key));
	memcpy(c->key.client_addr, c->st.remote_addr, 4);
	memcpy(c->key.vip_addr, c->st.local_addr, 4);
	c->key.client_port = htons(c->st.remote_port);
	c->key.vip_port = htons(c->st.local_port);
	c->key.family = 4;
	send_msg(dis.link.fd, MSG_OFFER, c->id, &c->st, sizeof(c->st), q, c->st.send_len, q + c->st.send_len, c->st.recv_len);
	free(q);
	c->phase = C_OFFERED;
}

static void distributor_msg(const struct msg_header *h, const uint8_t *body)
{
	struct client *c = &dis.clients[h->id % SLOTS];
	if (h->type == MSG_CLOSED) {
		if (c->phase == C_ROUTED && c->id == h->id) {
			bpf_map_update_elem(dis.routes_fd, &c->key, &dis.finished, BPF_ANY);
			client_free(c);
		}
		return;
	}
	if (h->type != MSG_ACCEPT || h->len != sizeof(struct accept_body) || c->phase != C_OFFERED || c->id != h->id)
		die("unexpected message from the importer", EPROTO);
	struct accept_body a;
	memcpy(&a, body, sizeof(a));
	if (a.result) {
		baton_repair_off(c->fd);
		return client_fail(c, "import", a.result);
	}
	int rc = bpf_map_update_elem(dis.routes_fd, &c->key, &dis.forward, BPF_ANY);
	if (rc) {
		baton_repair_off(c->fd);
		return client_fail(c, "route", errno);
	}
	uint64_t t1 = now_ns();
	if (dis.nwritten == dis.capwritten) {
		dis.capwritten = dis.capwritten ? 2 * dis.capwritten : 65536;
		dis.written = realloc(dis.written, dis.capwritten * sizeof(*dis.written));
		if (!dis.written)
			die("malloc", ENOMEM);
	}
	dis.written[dis.nwritten++] = c->key;
	if (dis.nsamples < MAX_SAMPLES)
		dis.samples[dis.nsamples++] = (uint32_t)((t1 - c->t0) / 1000);
	// The old socket's final clock: quiet once the flow is routed away, else read at the close.
	struct live_body lb;
	rc = baton_quiet_clock(c->fd, c->st.recv_seq + c->st.recv_len, &lb.timestamp);
	if (rc == -EBUSY)
		rc = baton_timestamp(c->fd, &lb.timestamp);
	if (rc)
		die(baton_last_step(), rc);
	rc = baton_close_silently(c->fd);
	if (rc)
		die(baton_last_step(), rc);
	c->fd = -1;
	c->phase = C_ROUTED;
	send_msg(dis.link.fd, MSG_LIVE, c->id, &lb, sizeof(lb), NULL, 0, NULL, 0);
}

static void distributor_client(struct client *c)
{
	for (;;) {
		ssize_t n = read(c->fd, c->line + c->line_len, sizeof(c->line) - c->line_len);
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			close(c->fd);
			return client_free(c);
		}
		c->line_len += (size_t)n;
		char *nl;
		while ((nl = memchr(c->line, '\n', c->line_len))) {
			size_t len = (size_t)(nl - c->line) + 1;
			if (len >= 5 && !memcmp(c->line, "HELLO", 5)) {
				if (write(c->fd, "WHO?\n", 5) != 5)
					return client_fail(c, "write WHO?", errno);
			} else if (len >= 5 && !memcmp(c->line, "USER ", 5)) {
				if (len != c->line_len)
					return client_fail(c, "bytes after USER", EPROTO);
				c->line_len = 0;
				return start_handoff(c);
			}
			memmove(c->line, c->line + len, c->line_len - len);
			c->line_len -= len;
		}
		if (c->line_len == sizeof(c->line))
			return client_fail(c, "line too long", EMSGSIZE);
	}
}

static void print_samples(void)
{
	// One write of the whole line, so that a reader never sees part of it.
	size_t cap = 64 + dis.nsamples * 11, len = 0;
	char *line = malloc(cap);
	if (!line)
		die("malloc", ENOMEM);
	len += (size_t)snprintf(line + len, cap - len, "{\"samplesUs\":[");
	for (size_t i = 0; i < dis.nsamples; i++)
		len += (size_t)snprintf(line + len, cap - len, "%s%u", i ? "," : "", dis.samples[i]);
	len += (size_t)snprintf(line + len, cap - len, "],\"failed\":%u}\n", dis.failed);
	write_all(STDOUT_FILENO, line, len);
	free(line);
	dis.nsamples = 0;
	dis.failed = 0;
}

static int distributor(char **argv)
{
	const char *dvipa = argv[0];
	int port = atoi(argv[1]);
	struct sockaddr_in imp_addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3])) };
	if (inet_pton(AF_INET, argv[2], &imp_addr.sin_addr) != 1)
		die("importer address", EINVAL);
	// n1's batond pins the routing table as it starts: wait for it for up to 10 s.
	for (int attempt = 0; (dis.routes_fd = bpf_obj_get(argv[4])) < 0; attempt++) {
		if (attempt == 100)
			die(argv[4], errno);
		usleep(100000);
	}
	dis.forward.state = ROUTE_FORWARD;
	dis.forward.target_node = (uint32_t)atoi(argv[6]);
	if (parse_mac(argv[5], dis.forward.target_mac))
		die("target mac", EINVAL);
	dis.finished = dis.forward;
	dis.finished.state = ROUTE_FINISHED;
	dis.samples = calloc(MAX_SAMPLES, sizeof(*dis.samples));
	for (int i = 0; i < SLOTS; i++)
		client_free(&dis.clients[i]);

	// The importer may still be starting: retry for up to 10 s.
	int link = -1;
	for (int attempt = 0; link < 0; attempt++) {
		link = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(link, (struct sockaddr *)&imp_addr, sizeof(imp_addr)) == 0)
			break;
		if (attempt == 100)
			die("connect to the importer", errno);
		close(link);
		link = -1;
		usleep(100000);
	}
	no_delay(link);
	if (fcntl(link, F_SETFL, O_NONBLOCK))
		die("link O_NONBLOCK", errno);
	dis.link.fd = link;

	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGUSR1);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);

	dis.epfd = epoll_create1(EPOLL_CLOEXEC);
	int lfd = listen_on(dvipa, port);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
	epoll_ctl(dis.epfd, EPOLL_CTL_ADD, lfd, &ev);
	ev.data.u64 = TAG_LINK;
	epoll_ctl(dis.epfd, EPOLL_CTL_ADD, link, &ev);
	ev.data.u64 = TAG_SIGNAL;
	epoll_ctl(dis.epfd, EPOLL_CTL_ADD, sfd, &ev);
	fprintf(stderr, "ref-handoff distributor listening on %s:%d\n", dvipa, port);
	for (;;) {
		struct epoll_event evs[64];
		int n = epoll_wait(dis.epfd, evs, 64, -1);
		if (n < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;
			if (tag == TAG_LISTEN) {
				int fd;
				while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					uint32_t id = ++dis.next_id;
					struct client *c = &dis.clients[id % SLOTS];
					if (c->phase != C_FREE)
						die("more connections in flight than slots", EOVERFLOW);
					no_delay(fd);
					*c = (struct client){ .phase = C_LOGIN, .fd = fd, .id = id };
					struct epoll_event cev = { .events = EPOLLIN, .data.u64 = id };
					epoll_ctl(dis.epfd, EPOLL_CTL_ADD, fd, &cev);
				}
			} else if (tag == TAG_LINK) {
				if (link_read(&dis.link, distributor_msg))
					die("the importer closed the link", EPIPE);
			} else if (tag == TAG_SIGNAL) {
				struct signalfd_siginfo si;
				if (read(sfd, &si, sizeof(si)) != sizeof(si))
					continue;
				if (si.ssi_signo == SIGUSR1) {
					print_samples();
					continue;
				}
				for (size_t k = 0; k < dis.nwritten; k++)
					bpf_map_delete_elem(dis.routes_fd, &dis.written[k]);
				return 0;
			} else {
				struct client *c = &dis.clients[tag % SLOTS];
				if (c->phase == C_LOGIN && c->id == (uint32_t)tag)
					distributor_client(c);
			}
		}
	}
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 5 && !strcmp(argv[1], "importer"))
		return importer(argv[2], atoi(argv[3]), argv[4]);
	if (argc == 9 && !strcmp(argv[1], "distributor"))
		return distributor(argv + 2);
	fprintf(stderr, "usage: ref-handoff importer <listen-ip> <port> <node>\n"
			"       ref-handoff distributor <dvipa> <port> <importer-ip> <importer-port> <routes-pin> <target-mac> <target-id>\n");
	return 2;
}
