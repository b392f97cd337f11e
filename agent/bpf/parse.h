/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing: Ethernet, IPv4 and the transport header, bounds-checked for the verifier. */
#ifndef LUMEN_PARSE_H
#define LUMEN_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

/* The start of an ICMP header (linux/icmp.h drags in libc headers). */
struct icmp_echo {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 seq;
};

/* The SCTP common header (RFC 9260 §3.1). */
struct sctp_common {
	__u16 source;
	__u16 dest;
	__u32 vtag;
	__u32 checksum;
};

/* iphdr.frag_off, host order: more fragments, and the fragment offset. */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

struct pkt {
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	/* Filled by parse_l4. */
	__u16 sport; /* network order; ICMP: echo id, or type << 8 | code */
	__u16 dport; /* network order; ICMP echo: the id again, else 0 */
	__u32 seq;   /* TCP sequence number, host order */
	__u16 hdr_len; /* IP + transport header bytes, repeated in every GSO segment;
			* 0 until parse_l4 has run */
	__u8 proto;
	__u8 tcp_flags;
};

/* Fill `p` for an IPv4 packet; non-zero for anything else. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > data_end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4)
		return -1;
	p->eth = eth;
	p->ip = ip;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->hdr_len = 0; /* parse_l4 not run yet */
	return 0;
}

/* Ports, flags and header length of the transport header after `p->ip`. A
 * non-first fragment or a truncated header leaves ports and flags zero. */
static __always_inline void parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = p->ip;
	__u32 ihl = ip->ihl * 4;
	void *l4;

	p->proto = ip->protocol;
	p->sport = 0;
	p->dport = 0;
	p->seq = 0;
	p->tcp_flags = 0;
	p->hdr_len = ihl;
	if (ihl < sizeof(*ip) || ihl > 60 || (ip->frag_off & bpf_htons(IP_OFFSET)))
		return;
	l4 = (void *)ip + ihl;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->seq = bpf_ntohl(tcp->seq);
		p->tcp_flags = ((__u8 *)tcp)[13];
		p->hdr_len += tcp->doff * 4;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return;
		p->sport = udp->source;
		p->dport = udp->dest;
		p->hdr_len += sizeof(*udp);
	} else if (p->proto == IPPROTO_SCTP) {
		struct sctp_common *sctp = l4;

		if ((void *)(sctp + 1) > data_end)
			return;
		p->sport = sctp->source;
		p->dport = sctp->dest;
		p->hdr_len += sizeof(*sctp);
	} else if (p->proto == IPPROTO_ICMP) {
		struct icmp_echo *icmp = l4;

		if ((void *)(icmp + 1) > data_end)
			return;
		if (icmp->type == ICMP_ECHO || icmp->type == ICMP_ECHOREPLY) {
			p->sport = icmp->id;
			p->dport = icmp->id;
		} else {
			p->sport = bpf_htons(icmp->type << 8 | icmp->code);
		}
		p->hdr_len += sizeof(*icmp);
	}
}

#endif
