/*
 * Baton native: kernel TLS (the Linux "tls" upper-layer protocol, CONFIG_TLS) on a TCP socket.
 * The target node's batond reinstates a TLS connection's socket (repair.h) and gives the kernel
 * the session's record-layer state, so the application reads and writes plaintext:
 *
 *   baton_ktls_install(fd, tx, rx, &step)     the tls ULP, then TLS_TX, then TLS_RX
 *   ...the application reads and writes plaintext through the normal socket API; a record that
 *   is not application data (an alert, a TLS 1.3 KeyUpdate) makes read() fail with EIO:
 *   baton_ktls_recv_record(fd, ...)           one record and its content type
 *   baton_ktls_send_record(fd, 21, ...)       an alert record (close_notify)
 *   ...a re-transfer:
 *   baton_ktls_queues(fd, &inq, &outq)        wait until nothing is unread or unacknowledged
 *   baton_ktls_get(fd, TLS_TX / TLS_RX, ...)  each direction's state as installed, rec_seq now
 *
 * tx and rx are the kernel's own structs (linux/tls.h: struct tls12_crypto_info_aes_gcm_128,
 * _aes_gcm_256, _chacha20_poly1305, which serve TLS 1.3 too), built and parsed in native/ktls.ts;
 * nothing here looks inside them. They hold keys: the caller zeroes its copies.
 *
 * Every call returns 0 or a byte count on success and -errno on failure. Needs a connected
 * (ESTABLISHED) socket; no privilege beyond that once the tls ULP is registered (loading its
 * module on first use takes CAP_NET_ADMIN).
 */
#ifndef BATON_KTLS_H
#define BATON_KTLS_H

#include <stddef.h>
#include <sys/types.h>

/* Which step of baton_ktls_install failed. */
#define BATON_KTLS_STEP_ULP 1 /* setsockopt(TCP_ULP, "tls"): ENOENT = no kernel TLS */
#define BATON_KTLS_STEP_TX 2  /* setsockopt(SOL_TLS, TLS_TX) */
#define BATON_KTLS_STEP_RX 3  /* setsockopt(SOL_TLS, TLS_RX) */

/* On failure *step names the step (BATON_KTLS_STEP_*); on success it is 0. Not atomic: a failure
 * after step 1 leaves the ULP (and after step 2 the TX state) installed, and the kernel cannot
 * take either off, so the socket is then good only for closing. */
int baton_ktls_install(int fd, const void *tx, unsigned tx_len, const void *rx, unsigned rx_len,
		       int *step);

/* getsockopt(SOL_TLS, which): which is TLS_TX (1) or TLS_RX (2). The kernel answers a len of
 * exactly 4 (struct tls_crypto_info: version, cipher) or exactly its cipher's struct size, and
 * refuses any other with EINVAL. Returns the bytes written; -EBUSY: that direction is not set. */
int baton_ktls_get(int fd, int which, void *buf, unsigned len);

/* recvmsg of at most one non-data record (the kernel never joins records of different types, nor
 * two non-data records): *type is its content type (TLS_GET_RECORD_TYPE), or 23 (application
 * data) when no type came (end of stream). flags go to recvmsg (MSG_DONTWAIT, MSG_PEEK).
 * Returns the bytes read; 0 with type 23 is end of stream. */
ssize_t baton_ktls_recv_record(int fd, void *buf, size_t len, int *type, int flags);

/* sendmsg of len bytes as records of content type `type` (TLS_SET_RECORD_TYPE; 0..255).
 * flags: MSG_DONTWAIT, MSG_NOSIGNAL, MSG_MORE (the kernel refuses any other). Returns bytes sent. */
ssize_t baton_ktls_send_record(int fd, int type, const void *buf, size_t len, int flags);

/* The TCP queues' lengths (SIOCINQ, SIOCOUTQ: tcp_ioctl, which kernel TLS leaves alone): bytes
 * received that kernel TLS has not consumed (a record not yet complete), and bytes sent that the
 * peer has not acknowledged. A kernel TLS socket's queues cannot be read raw (every read goes
 * through kernel TLS, repair mode included): it can be moved only when both are empty. */
int baton_ktls_queues(int fd, int *inq, int *outq);

#endif /* BATON_KTLS_H */
