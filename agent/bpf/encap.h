/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * VXLAN in BPF (RFC 7348): the headers, and the sending side's fast path, which
 * encapsulates a pod's packet for a remote node itself and hands it straight to
 * the uplink's neighbour output (bpf_redirect_neigh: the kernel routes the
 * outer packet, fills in its MAC addresses, and resolves the next hop's when it
 * has none yet), instead of setting a tunnel key and going through the VXLAN
 * device and the node's IP output. GSO packets stay GSO (the kernel segments
 * them as UDP tunnel packets, as it does the device's).
 */
#ifndef LUMEN_ENCAP_H
#define LUMEN_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"
#include "parse.h"

/* A VXLAN header: flags (the I bit) and the VNI in the top 24 bits. */
struct vxlan_hdr {
	__u32 flags;
	__u32 vni;
};

#define VXLAN_FLAG_I 0x08000000u
/* What encapsulation adds in front of the inner Ethernet frame's own header. */
#define VXLAN_OVERHEAD (sizeof(struct iphdr) + sizeof(struct udphdr) + \
			sizeof(struct vxlan_hdr) + sizeof(struct ethhdr))

/* bpf_skb_adjust_room's flags for encapsulating (the kernel then segments a GSO
 * packet as a UDP tunnel packet and offloads the inner checksum) and for
 * decapsulating (a GSO packet keeps its inner segment size). */
#define VXLAN_ENCAP_FLAGS (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | \
			   BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH | \
			   BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr)))
#define VXLAN_DECAP_FLAGS BPF_F_ADJ_ROOM_FIXED_GSO

#define IP_DF 0x4000
#define ECN_MASK 3
#define ECN_ECT_0 2
#define ECN_CE 3

/* The kernel's own VXLAN source-port range (its default local port range). */
#define VXLAN_SPORT_MIN 32768
#define VXLAN_SPORT_MAX 61000

/* Every header in front of the inner IP packet, laid over the packet from `eth`;
 * `align` puts the IP header on a 4-byte boundary with no padding between. */
struct vxlan_encap {
	__u16 align;
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct vxlan_hdr vx;
	struct ethhdr inner;
};

#define VXLAN_ENCAP_LEN (sizeof(struct ethhdr) + VXLAN_OVERHEAD)
_Static_assert(__builtin_offsetof(struct vxlan_encap, inner) + sizeof(struct ethhdr) -
		       __builtin_offsetof(struct vxlan_encap, eth) == VXLAN_ENCAP_LEN,
	       "vxlan_encap has padding between its headers");

/*
 * Can the fast path take this packet? It needs the uplink (its programs
 * attached) and a packet that still fits the uplink's MTU once encapsulated,
 * unless it is GSO: its segments are sized for the overlay. A bigger one takes
 * the VXLAN device's path, which answers with the path MTU. The MTU is the one
 * the agent read when it attached the uplink, as the pods' MTU is.
 */
static __always_inline int encap_fits(struct __sk_buff *skb, struct dp_config *cfg)
{
	if (!cfg->vxlan_port || !cfg->uplink_ifindex)
		return 0;
	return skb->gso_size || skb->len - ETH_HLEN + VXLAN_OVERHEAD <= cfg->uplink_mtu;
}

/* The outer header's ECN: the inner packet's, with CE sent as ECT(0), as the
 * kernel's tunnels do (the receiver copies CE back from the outer header). */
static __always_inline __u8 outer_ecn(__u8 inner_tos)
{
	__u8 ecn = inner_tos & ECN_MASK;

	return ecn == ECN_CE ? ECN_ECT_0 : ecn;
}

static __always_inline __u16 ipv4_csum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* The flow's hash: the kernel's when the packet has one (a pod's socket gives
 * its packets one), else a mix of the addresses, ports and protocol, rather
 * than the flow dissection bpf_get_hash_recalc would run on every packet. */
static __always_inline __u32 flow_hash(struct __sk_buff *skb, struct pkt *p)
{
	__u32 h = skb->hash;

	if (h)
		return h;
	if (!p->hdr_len) /* flow tracking off: the ports are not parsed yet */
		parse_l4(skb, p);
	h = (p->saddr * 0x9e3779b1u) ^ p->daddr;
	h ^= ((__u32)p->sport << 16 | p->dport) ^ p->proto;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	return h ^ (h >> 16);
}

/* A source port from the flow's hash, so the underlay spreads flows (ECMP, RSS)
 * the way it does the kernel's VXLAN traffic. */
static __always_inline __u16 vxlan_sport(struct __sk_buff *skb, struct pkt *p)
{
	__u32 hash = flow_hash(skb, p);

	hash ^= hash << 16;
	return VXLAN_SPORT_MIN +
	       (__u16)(((__u64)hash * (VXLAN_SPORT_MAX - VXLAN_SPORT_MIN)) >> 32);
}

/* The outcome of vxlan_encap. */
enum encap_result {
	ENCAP_DONE = 0,      /* encapsulated: redirect to the uplink's neighbour */
	ENCAP_UNCHANGED = 1, /* the packet is as it was: take the device's path */
	ENCAP_BROKEN = 2,    /* grown but not written: drop */
};

/*
 * Encapsulate the packet `p` describes toward `rn`, with `tag` in the VNI. The
 * outer MAC addresses stay zero: bpf_redirect_neigh writes the route's. `p`'s
 * pointers are stale afterwards.
 */
static __always_inline enum encap_result vxlan_encap(struct __sk_buff *skb, struct pkt *p,
						     struct dp_config *cfg,
						     struct remote_node *rn, __u32 tag)
{
	struct vxlan_encap h = {};
	struct vxlan_encap *out;
	void *data, *data_end;
	__u32 outer_len;

	/* From the inner headers, while `p` still points at them. */
	h.udp.source = bpf_htons(vxlan_sport(skb, p));
	__builtin_memcpy(&h.inner, p->eth, sizeof(h.inner));
	h.ip.tos = outer_ecn(p->ip->tos);
	if (bpf_skb_adjust_room(skb, VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, VXLAN_ENCAP_FLAGS))
		return ENCAP_UNCHANGED;
	h.eth.h_proto = bpf_htons(ETH_P_IP);
	/* A GSO packet's lengths and checksum are redone for each segment. */
	outer_len = skb->len - sizeof(struct ethhdr);
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tot_len = bpf_htons(outer_len > 0xffff ? 0 : outer_len);
	h.ip.frag_off = bpf_htons(IP_DF);
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.saddr = cfg->node_ip;
	h.ip.daddr = rn->node_ip;
	h.ip.check = ipv4_csum(&h.ip);
	h.udp.dest = bpf_htons(cfg->vxlan_port);
	outer_len -= sizeof(struct iphdr);
	h.udp.len = bpf_htons(outer_len > 0xffff ? 0 : outer_len);
	/* Zero, as RFC 7348 recommends over IPv4 (set_tunnel says why). */
	h.udp.check = 0;
	h.vx.flags = bpf_htonl(VXLAN_FLAG_I);
	h.vx.vni = bpf_htonl(tag << 8);
	/* Written in place: `align` falls just before the packet, never written. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	out = data - sizeof(h.align);
	if ((void *)(out + 1) > data_end)
		return ENCAP_BROKEN;
	out->eth = h.eth;
	out->ip = h.ip;
	out->udp = h.udp;
	out->vx = h.vx;
	out->inner = h.inner;
	return ENCAP_DONE;
}

#endif
