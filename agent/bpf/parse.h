/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing: Ethernet + IPv4 header, bounds-checked for the verifier. */
#ifndef LUMEN_PARSE_H
#define LUMEN_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

struct pkt {
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
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
	return 0;
}

#endif
