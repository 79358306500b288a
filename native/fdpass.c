/*
 * Baton native: socket descriptors between processes over abstract Unix datagram sockets
 * (SCM_RIGHTS), authenticated by SCM_CREDENTIALS. The protocol is described in fdpass.h.
 */
#define _GNU_SOURCE /* struct ucred, SCM_CREDENTIALS, MSG_CMSG_CLOEXEC */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fdpass.h"

#define ABSTRACT_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/* Room for more descriptors than a well-behaved sender puts in one datagram, so a sender that
 * attaches a few extra only costs itself those (closed here), not a -EMSGSIZE for the tag. */
#define RIGHTS_MAX 8

static socklen_t abstract_addr(struct sockaddr_un *sa, const char *name, uint32_t len)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path + 1, name, len);
	/* The length, not a NUL, ends an abstract name: the NUL padding must not count. */
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
}

int baton_fdsock_open(const char *name, uint32_t name_len, char *bound, uint32_t bound_cap,
		      uint32_t *bound_len)
{
	struct sockaddr_un sa;
	socklen_t sa_len;
	const int on = 1;
	int fd, err;

	if (name_len > ABSTRACT_MAX)
		return -ENAMETOOLONG;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)))
		goto fail;
	if (name_len > 0) {
		sa_len = abstract_addr(&sa, name, name_len);
	} else {
		/* Only the family: the kernel picks an unused abstract name. */
		memset(&sa, 0, sizeof(sa));
		sa.sun_family = AF_UNIX;
		sa_len = sizeof(sa_family_t);
	}
	if (bind(fd, (struct sockaddr *)&sa, sa_len))
		goto fail;

	sa_len = sizeof(sa);
	if (getsockname(fd, (struct sockaddr *)&sa, &sa_len))
		goto fail;
	if (sa_len <= offsetof(struct sockaddr_un, sun_path) + 1 || sa.sun_path[0] != '\0') {
		errno = EPROTO;
		goto fail;
	}
	sa_len -= offsetof(struct sockaddr_un, sun_path) + 1;
	if (sa_len > bound_cap) {
		errno = ENAMETOOLONG;
		goto fail;
	}
	memcpy(bound, sa.sun_path + 1, sa_len);
	*bound_len = sa_len;
	return fd;

fail:
	err = -errno;
	close(fd);
	return err;
}

/* A filesystem sun_path: no NUL inside (the kernel would cut the name there), at most 107 bytes. */
static int path_addr(struct sockaddr_un *sa, socklen_t *sa_len, const char *path, uint32_t len)
{
	if (len == 0 || memchr(path, '\0', len))
		return -EINVAL;
	if (len > ABSTRACT_MAX)
		return -ENAMETOOLONG;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, len);
	*sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	return 0;
}

int baton_fdsock_bind_path(const char *path, uint32_t path_len)
{
	struct sockaddr_un sa;
	socklen_t sa_len;
	mode_t old;
	int fd, err;

	err = path_addr(&sa, &sa_len, path, path_len);
	if (err)
		return err;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* Owner-only from the moment it exists: a chmod after bind would leave a window open. The
	 * umask is the process's: a file another thread creates in this instant is owner-only too,
	 * never more open than asked. */
	old = umask(0177);
	err = bind(fd, (struct sockaddr *)&sa, sa_len) ? -errno : 0;
	umask(old);
	if (err) {
		close(fd);
		return err;
	}
	return fd;
}

int baton_fdsock_connect(int sock, const char *path, uint32_t path_len)
{
	struct sockaddr_un sa;
	socklen_t sa_len;
	int err;

	err = path_addr(&sa, &sa_len, path, path_len);
	if (err)
		return err;
	while (connect(sock, (struct sockaddr *)&sa, sa_len)) {
		if (errno != EINTR)
			return -errno;
	}
	return 0;
}

int baton_fd_pair(int *a_out, int *b_out, uint32_t sndbuf)
{
	const int on = 1;
	const int size = (int)sndbuf;
	int sv[2], err;

	if (sndbuf > INT32_MAX / 2)
		return -EINVAL;
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv))
		return -errno;
	for (int i = 0; i < 2; i++) {
		if (setsockopt(sv[i], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)))
			goto fail;
		/* What may wait unread is bounded by the sender's send buffer (no queue-length limit
		 * between the two ends of a pair): past net.core.wmem_max only with CAP_NET_ADMIN. */
		if (sndbuf && setsockopt(sv[i], SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) &&
		    (errno != EPERM || setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size))))
			goto fail;
	}
	*a_out = sv[0];
	*b_out = sv[1];
	return 0;

fail:
	err = -errno;
	close(sv[0]);
	close(sv[1]);
	return err;
}

int baton_fd_send(int sock, const char *to, uint32_t to_len, int fd, const uint8_t *tag,
		  uint32_t tag_len)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct sockaddr_un sa;
	struct iovec iov = { .iov_base = (void *)tag, .iov_len = tag_len };
	struct msghdr msg = {
		.msg_name = &sa,
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};
	struct cmsghdr *cm;

	if (tag_len == 0 || tag_len > BATON_FD_TAG_MAX || to_len > ABSTRACT_MAX)
		return -EINVAL;
	if (to_len)
		msg.msg_namelen = abstract_addr(&sa, to, to_len);
	else
		msg.msg_name = NULL; /* a connected socket: one end of a pair */
	memset(&control, 0, sizeof(control));
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));

	/* No SCM_CREDENTIALS of our own: the kernel attaches the real ones for a receiver with
	 * SO_PASSCRED, and those are what the receiver must trust. */
	while (sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	return 0;
}

int baton_fd_recv(int sock, int *fd_out, uint8_t *tag, uint32_t tag_cap, int32_t *pid_out)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(RIGHTS_MAX * sizeof(int))];
	} control;
	struct iovec iov = { .iov_base = tag, .iov_len = tag_cap };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};
	struct cmsghdr *cm;
	ssize_t n;
	int fd = -1;
	int truncated;

	*fd_out = -1;
	*pid_out = -1;
	/* MSG_CMSG_CLOEXEC: a child batond spawns must not inherit a client's connection. */
	while ((n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC)) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;

	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET)
			continue;
		if (cm->cmsg_type == SCM_CREDENTIALS && cm->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
			struct ucred cred;

			memcpy(&cred, CMSG_DATA(cm), sizeof(cred));
			*pid_out = cred.pid;
		} else if (cm->cmsg_type == SCM_RIGHTS) {
			size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			/* The descriptors are ours now, whatever happens to the datagram: every one not
			 * handed out is closed, or it leaks for the life of batond. */
			for (size_t i = 0; i < count; i++) {
				int got;

				memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (fd < 0 && !truncated)
					fd = got;
				else
					close(got);
			}
		}
	}
	if (truncated)
		return -EMSGSIZE;
	*fd_out = fd;
	return (int)n;
}

int baton_peer_pid(int sock)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len))
		return -errno;
	/* pid 0 is what an unconnected (or non-Unix) socket reports: never a pid to match. */
	if (cred.pid <= 0)
		return -ENOTCONN;
	return cred.pid;
}

int baton_close_fd(int fd)
{
	/* Linux releases the descriptor even when close reports EINTR; retrying could close a
	 * descriptor another thread has opened in the meantime, and failing would invite that. */
	if (close(fd) && errno != EINTR)
		return -errno;
	return 0;
}
