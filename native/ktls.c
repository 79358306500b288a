/*
 * Baton native: kernel TLS on a TCP socket (the call sequence is in ktls.h). One syscall per
 * step; the struct bytes are the kernel's, built in native/ktls.ts.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/tls.h>

#include "ktls.h"

/* glibc 2.36 (Debian 12) defines both; an older libc (or a musl build) may not, and the numbers
 * are the kernel's ABI (include/linux/socket.h, include/uapi/linux/tcp.h), so they cannot differ. */
#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

int baton_ktls_install(int fd, const void *tx, unsigned tx_len, const void *rx, unsigned rx_len,
		       int *step)
{
	/* The kernel reads the name up to its NUL, within the length given. */
	static const char ulp[] = "tls";

	*step = BATON_KTLS_STEP_ULP;
	if (setsockopt(fd, SOL_TCP, TCP_ULP, ulp, sizeof(ulp)))
		return -errno;
	*step = BATON_KTLS_STEP_TX;
	if (setsockopt(fd, SOL_TLS, TLS_TX, tx, tx_len))
		return -errno;
	*step = BATON_KTLS_STEP_RX;
	if (setsockopt(fd, SOL_TLS, TLS_RX, rx, rx_len))
		return -errno;
	*step = 0;
	return 0;
}

int baton_ktls_get(int fd, int which, void *buf, unsigned len)
{
	socklen_t got = len;

	if (which != TLS_TX && which != TLS_RX)
		return -EINVAL;
	if (getsockopt(fd, SOL_TLS, which, buf, &got))
		return -errno;
	return (int)got;
}

ssize_t baton_ktls_recv_record(int fd, void *buf, size_t len, int *type, int flags)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(unsigned char))];
	} control;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};
	struct cmsghdr *cm;
	ssize_t n;

	*type = 23; /* application data: what the kernel means when it attaches no type */
	while ((n = recvmsg(fd, &msg, flags)) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level == SOL_TLS && cm->cmsg_type == TLS_GET_RECORD_TYPE &&
		    cm->cmsg_len >= CMSG_LEN(sizeof(unsigned char)))
			*type = *(unsigned char *)CMSG_DATA(cm);
	}
	/* The kernel itself fails a non-data record with EIO when the type did not fit; a truncated
	 * control buffer here could only mean a cmsg this buffer was not sized for. */
	if (msg.msg_flags & MSG_CTRUNC)
		return -EIO;
	return n;
}

ssize_t baton_ktls_send_record(int fd, int type, const void *buf, size_t len, int flags)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(unsigned char))];
	} control;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};
	struct cmsghdr *cm;
	ssize_t n;

	if (type < 0 || type > 255)
		return -EINVAL;
	memset(&control, 0, sizeof(control));
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_TLS;
	cm->cmsg_type = TLS_SET_RECORD_TYPE;
	/* The kernel wants exactly this length (tls_process_cmsg), not the padded CMSG_SPACE. */
	cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
	*(unsigned char *)CMSG_DATA(cm) = (unsigned char)type;
	while ((n = sendmsg(fd, &msg, flags)) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	return n;
}

int baton_ktls_queues(int fd, int *inq, int *outq)
{
	if (ioctl(fd, SIOCINQ, inq) || ioctl(fd, SIOCOUTQ, outq))
		return -errno;
	return 0;
}
