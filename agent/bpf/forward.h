/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Forwarding decisions: deliver to a local pod, or tunnel to the node that owns the
 * destination's pod CIDR with the flow tag in the VNI.
 */
#ifndef LUMEN_FORWARD_H
#define LUMEN_FORWARD_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"
#include "parse.h"
#include "counters.h"

static __always_inline struct dp_config *dp_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

/* The pod at `addr` on this node. Only the node's pod CIDR holds its pods, so
 * other addresses (remote pods, the world) need no lookup. */
static __always_inline struct endpoint *endpoint_of(struct dp_config *cfg, __u32 addr)
{
	struct endpoint *ep;
	__u32 slot;

	if ((addr & cfg->pod_mask) != cfg->pod_addr)
		return 0;
	slot = bpf_ntohl(addr) - bpf_ntohl(cfg->pod_addr);
	ep = bpf_map_lookup_elem(&endpoints, &slot);
	return ep && ep->ifindex ? ep : 0;
}

/* The remote node whose pod CIDR holds `addr`: its slot if it has one (an array
 * load, no call), else the trie if that holds anything. */
static __always_inline struct remote_node *remote_of(struct dp_config *cfg, __u32 addr)
{
	struct lpm_v4_key key = { .prefixlen = 32, .addr = addr };

	if ((addr & cfg->cluster_mask) == cfg->cluster_addr && cfg->slot_shift) {
		__u32 slot = (bpf_ntohl(addr) - bpf_ntohl(cfg->cluster_addr)) >> cfg->slot_shift;
		struct remote_node *rn = bpf_map_lookup_elem(&remote_slots, &slot);

		if (rn && rn->node_ip)
			return rn;
	}
	if (!(cfg->flags & CFG_REMOTE_TRIE))
		return 0;
	return bpf_map_lookup_elem(&remote_cidrs, &key);
}

static __always_inline __u32 make_tag(__u32 identity, struct __sk_buff *skb)
{
	__u32 tag = identity & TAG_IDENTITY_MASK;

	if (skb->mark & MARK_TRACE)
		tag |= TAG_TRACE;
	return tag;
}

/* Hand the packet to a pod on this node, straight into its namespace. */
static __always_inline int deliver_local(struct __sk_buff *skb, struct pkt *p,
					 struct endpoint *dst)
{
	__builtin_memcpy(p->eth->h_dest, dst->mac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, dst->host_mac, ETH_ALEN);
	return bpf_redirect_peer(dst->ifindex, 0);
}

/* Set the tunnel key: remote node, tag in the VNI, never fragment on the underlay.
 * The outer UDP checksum is zero, as RFC 7348 recommends for VXLAN over IPv4 and
 * as the kernel's own VXLAN devices send by default: the inner packet has its own,
 * and computing one more for every packet of a stream is measurable throughput. */
static __always_inline int set_tunnel(struct __sk_buff *skb, struct remote_node *rn,
				      __u32 tag)
{
	struct bpf_tunnel_key key = {};

	key.remote_ipv4 = bpf_ntohl(rn->node_ip);
	key.tunnel_id = tag;
	key.tunnel_ttl = 64;
	return bpf_skb_set_tunnel_key(skb, &key, sizeof(key),
				      BPF_F_DONT_FRAGMENT | BPF_F_ZERO_CSUM_TX);
}

#endif
