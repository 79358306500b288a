/*
 * Baton native: passing socket descriptors between an application and batond (SCM_RIGHTS).
 *
 * Each process already has a stream channel to batond. Descriptors travel beside it on Unix
 * SOCK_DGRAM sockets: one datagram per descriptor, its payload a tag (the connection id) that the
 * stream message refers to. The sender sends the datagram BEFORE the stream message, so a receiver
 * that has read the message knows the datagram is queued and receives without blocking; nothing
 * here waits or polls.
 *
 * Three kinds of socket (controller/transfer/fd-exchange.ts uses all three): a socket bound in
 * the abstract namespace (baton_fdsock_open: an application's inbox, where batond sends it one end
 * of its descriptor link), batond's socket that sends it, bound at a filesystem path
 * (baton_fdsock_bind_path), and a connected pair (baton_fd_pair: the link itself, which has no
 * queue-length limit between its ends).
 *
 * The receiver has SO_PASSCRED on, so the kernel attaches the sender's credentials to every
 * datagram. Anybody in the network namespace can send to an abstract address, whatever their uid,
 * and net.unix.max_dgram_qlen datagrams (10 in a fresh namespace) fill an unread inbox: then
 * nobody else's datagram gets in (-EAGAIN). So an application's inbox is connected
 * (baton_fdsock_connect) to batond's own sending socket, bound at a filesystem path beside the
 * agent socket with its mode (baton_fdsock_bind_path), before every hello: the kernel then takes
 * datagrams into the inbox from that socket only (any other sender gets -EPERM: unix_may_send
 * in net/unix/af_unix.c), and does not apply the queue-length limit to it. The path, unlike an
 * abstract name, cannot be taken by another user first, and only those who may use the agent
 * socket may connect to it. The receiver still accepts a descriptor only if the datagram's pid
 * equals baton_peer_pid() of the stream channel it expects the descriptor on.
 *
 * Abstract names cross as bytes without the leading NUL: "baton-x" is sun_path "\0baton-x"
 * (ss shows it as "@baton-x"). Every call returns -errno on failure and never prints.
 */
#ifndef BATON_FDPASS_H
#define BATON_FDPASS_H

#include <stdint.h>

/* Longest tag baton_fd_send accepts; connection ids are at most 80 bytes. */
#define BATON_FD_TAG_MAX 255

/*
 * A new non-blocking, close-on-exec SOCK_DGRAM socket with SO_PASSCRED on, bound to the abstract
 * name name[0..name_len) (at most 107 bytes, else -ENAMETOOLONG), or, if name_len is 0, to a
 * unique name the kernel picks (autobind: five hex digits). The name it is bound to is copied to
 * bound (not NUL-terminated), its length to *bound_len (-ENAMETOOLONG if bound_cap is smaller).
 * Returns the socket's fd; on failure no socket is left open (-EADDRINUSE: the name is taken).
 */
int baton_fdsock_open(const char *name, uint32_t name_len, char *bound, uint32_t bound_cap,
		      uint32_t *bound_len);

/*
 * A new non-blocking, close-on-exec SOCK_DGRAM socket bound at the filesystem path
 * path[0..path_len) (1..107 bytes, no NUL, else -EINVAL or -ENAMETOOLONG), created with mode 0600
 * (owner only, like the agent socket): only a process that may write the path can connect an
 * inbox to it. -EADDRINUSE when the path exists (remove a stale one first). Returns the fd.
 */
int baton_fdsock_bind_path(const char *path, uint32_t path_len);

/*
 * Connects sock (a datagram socket) to the socket bound at the filesystem path path[0..path_len):
 * from then on the kernel queues on sock only datagrams sent from that socket (others: -EPERM),
 * and sock sends there by default. Connecting again to another socket replaces the peer. 0 or
 * -errno: -ENOENT or -ECONNREFUSED (nothing bound there), -EACCES (no write permission on it).
 */
int baton_fdsock_connect(int sock, const char *path, uint32_t path_len);

/*
 * A connected pair of non-blocking, close-on-exec SOCK_DGRAM sockets with SO_PASSCRED on, the
 * private descriptor link between batond and one application (batond keeps *a_out and sends
 * *b_out to the application). Between the two ends of a pair the kernel applies no queue-length
 * limit (net.unix.max_dgram_qlen is for datagrams from strangers): what may wait unread is
 * bounded by the sender's send buffer, set to sndbuf bytes on both ends (0: the default) with
 * SO_SNDBUFFORCE, or SO_SNDBUF capped at net.core.wmem_max without CAP_NET_ADMIN. 0 or -errno.
 */
int baton_fd_pair(int *a_out, int *b_out, uint32_t sndbuf);

/*
 * Sends a duplicate of fd, with the tag tag[0..tag_len) as payload (1..BATON_FD_TAG_MAX bytes,
 * else -EINVAL), from sock to the socket bound at the abstract name to[0..to_len), or, with
 * to_len 0, to the other end of sock's pair. Never blocks.
 * 0 on success. -EAGAIN: the receiver's queue is full (to an address: net.unix.max_dgram_qlen
 * datagrams, 10 by default, unless the receiver is connected to sock; on a pair: the send
 * buffer); -EPERM: the receiver is connected to another socket; -ECONNREFUSED: nothing is bound
 * at `to`; -EBADF: fd is not open. The caller's fd stays open: the receiver gets its own descriptor.
 */
int baton_fd_send(int sock, const char *to, uint32_t to_len, int fd, const uint8_t *tag,
		  uint32_t tag_len);

/*
 * Takes the oldest datagram queued on sock without blocking. Returns its payload length (the tag,
 * copied to tag[0..tag_cap)), with *fd_out the descriptor it carried (close-on-exec; -1 if it
 * carried none) and *pid_out the sender's pid as the kernel saw it (-1 if no credentials came).
 * -EAGAIN: nothing is queued. -EMSGSIZE: the payload was longer than tag_cap or the descriptors
 * did not fit; the datagram is consumed, every descriptor that arrived is closed, *fd_out is -1
 * and *pid_out still names the sender. A datagram with several descriptors keeps the first and
 * closes the others.
 */
int baton_fd_recv(int sock, int *fd_out, uint8_t *tag, uint32_t tag_cap, int32_t *pid_out);

/*
 * The pid at the other end of a connected Unix socket (SO_PEERCRED: the process that connected,
 * or accepted, as of that moment). -ENOTCONN if the socket has no peer credentials (not
 * connected, or not a Unix socket).
 */
int baton_peer_pid(int sock);

/* close(2). 0 or -errno. A plain close: for a TCP socket in repair mode see baton_close_silently. */
int baton_close_fd(int fd);

#endif
