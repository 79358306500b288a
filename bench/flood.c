// Packet flood for `make bench` (XDP steering rate): sends one pre-built Ethernet/IPv4/TCP frame
// over and over through an AF_PACKET socket on the given interface, for a fixed time, and prints
// how many frames the kernel accepted as one JSON line.
//
// The segment carries RST: whichever node it ends up on, no socket answers a reset, so the
// receiver's cost is the same small drop for the steered and the forwarded variant, and no reply
// flood competes for the two cores. Checksums are complete (the lab's veths do not offload them).
//
// usage: flood <ifname> <src-mac> <dst-mac> <src-ip> <dst-ip> <src-port> <dst-port> <seconds>
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FRAME_LEN (sizeof(struct ether_header) + sizeof(struct iphdr) + sizeof(struct tcphdr))

static int parse_mac(const char *text, uint8_t mac[6])
{
	unsigned int b[6];

	if (sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)b[i];
	return 0;
}

static uint32_t sum16(const void *data, size_t len, uint32_t sum)
{
	const uint8_t *p = data;

	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)(p[len - 1] << 8);
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((uint16_t)~sum);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	uint8_t frame[FRAME_LEN] = { 0 };
	struct ether_header *eth = (struct ether_header *)frame;
	struct iphdr *ip = (struct iphdr *)(eth + 1);
	struct tcphdr *tcp = (struct tcphdr *)(ip + 1);
	struct sockaddr_ll addr = { 0 };
	struct mmsghdr msgs[BATCH];
	struct iovec iov = { .iov_base = frame, .iov_len = FRAME_LEN };
	unsigned long long sent = 0, refused = 0;
	double seconds, start, elapsed;
	int fd, one = 1;

	if (argc != 9) {
		fprintf(stderr, "usage: %s ifname src-mac dst-mac src-ip dst-ip src-port dst-port seconds\n", argv[0]);
		return 2;
	}
	if (parse_mac(argv[2], eth->ether_shost) || parse_mac(argv[3], eth->ether_dhost)) {
		fprintf(stderr, "bad MAC address\n");
		return 2;
	}
	eth->ether_type = htons(ETHERTYPE_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = htons(sizeof(struct iphdr) + sizeof(struct tcphdr));
	ip->ttl = 64;
	ip->protocol = IPPROTO_TCP;
	if (inet_pton(AF_INET, argv[4], &ip->saddr) != 1 || inet_pton(AF_INET, argv[5], &ip->daddr) != 1) {
		fprintf(stderr, "bad IPv4 address\n");
		return 2;
	}
	ip->check = fold(sum16(ip, sizeof(*ip), 0));
	tcp->source = htons((uint16_t)atoi(argv[6]));
	tcp->dest = htons((uint16_t)atoi(argv[7]));
	tcp->seq = htonl(1);
	tcp->doff = 5;
	tcp->rst = 1;
	tcp->window = htons(512);
	{
		// The pseudo-header: addresses, protocol, TCP length.
		uint8_t pseudo[12];

		memcpy(pseudo, &ip->saddr, 4);
		memcpy(pseudo + 4, &ip->daddr, 4);
		pseudo[8] = 0;
		pseudo[9] = IPPROTO_TCP;
		pseudo[10] = 0;
		pseudo[11] = sizeof(struct tcphdr);
		tcp->check = fold(sum16(tcp, sizeof(*tcp), sum16(pseudo, sizeof(pseudo), 0)));
	}
	seconds = atof(argv[8]);
	if (seconds <= 0 || seconds > 60) {
		fprintf(stderr, "seconds must be in (0, 60]\n");
		return 2;
	}

	fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("socket(AF_PACKET)");
		return 1;
	}
	// Straight to the driver: the qdisc layer is not what is being measured.
	if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0)
		perror("PACKET_QDISC_BYPASS (continuing)");
	addr.sll_family = AF_PACKET;
	addr.sll_ifindex = (int)if_nametoindex(argv[1]);
	addr.sll_halen = 6;
	memcpy(addr.sll_addr, eth->ether_dhost, 6);
	if (addr.sll_ifindex == 0) {
		perror("if_nametoindex");
		return 1;
	}
	for (int i = 0; i < BATCH; i++) {
		memset(&msgs[i], 0, sizeof(msgs[i]));
		msgs[i].msg_hdr.msg_name = &addr;
		msgs[i].msg_hdr.msg_namelen = sizeof(addr);
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}

	start = now();
	do {
		// The clock is read once per batch: a bound of a few microseconds past the deadline.
		int n = sendmmsg(fd, msgs, BATCH, 0);

		if (n < 0) {
			if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR) {
				perror("sendmmsg");
				return 1;
			}
			refused++;
			continue;
		}
		sent += (unsigned long long)n;
	} while ((elapsed = now() - start) < seconds);
	close(fd);
	printf("{\"sent\":%llu,\"refused_batches\":%llu,\"seconds\":%.6f}\n", sent, refused, elapsed);
	return 0;
}
