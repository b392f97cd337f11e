// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Lumen's datapath entry points. Each is thin: parse, decide (forward.h), account
 * the packet to its flow (flow.h), act. Attached as tc (clsact) filters:
 *   from_pod     host veth ingress  (what the pod sends)
 *   to_pod       host veth egress   (what the host stack sends into the pod)
 *   from_overlay VXLAN ingress      (decapsulated packets from other nodes)
 *   to_overlay   VXLAN egress       (host-stack packets routed to remote pod CIDRs)
 *   to_underlay  uplink egress      (traced packets leaving the node: masquerade hop)
 *   from_underlay uplink ingress    (the overlay's receiving fast path: VXLAN packets
 *                                    for local pods decapsulated and delivered here)
 * Traced packets also report each hop (trace.h). Packets redirected between these hooks skip the host stack and the egress hook
 * of their target, so every packet is accounted exactly once per node.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_packet.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "counters.h"
#include "forward.h"
#include "flow.h"
#include "trace.h"
#include "encap.h"

/* Identities of a packet's endpoints as this node derives them from addresses. */
static __always_inline void observe_addrs(struct flow_obs *obs, struct pkt *p,
					  struct dp_config *cfg, struct __sk_buff *skb,
					  __u8 dir)
{
	obs->dir = dir;
	obs->src_identity = identity_of_addr(p->saddr, cfg);
	obs->dst_identity = identity_of_addr(p->daddr, cfg);
	obs->traced = !!(skb->mark & MARK_TRACE);
}

/* The flow learns the sender's tag; with `set_key` (the VXLAN device's path)
 * the tunnel key toward `rn` carries it, or the packet is to be dropped. */
static __always_inline void tunnel(struct __sk_buff *skb, struct remote_node *rn,
				   struct flow_obs *obs, int set_key)
{
	obs->tag = make_tag(obs->src_identity, skb);
	if (set_key && set_tunnel(skb, rn, obs->tag))
		obs->drop = DROP_TUNNEL_KEY;
}

/* Count a drop by its reason and drop. */
static __always_inline int dropped(__u8 reason)
{
	count(reason == DROP_POLICY ? CNT_DROP_POLICY : CNT_DROP_TUNNEL_KEY);
	return TC_ACT_SHOT;
}

/* A traced packet's last hop on this node: an injected one goes no further. */
static __always_inline int trace_end(struct trace_ctx *t, int verdict)
{
	return (t->flags & TRACE_F_INJECTED) ? TC_ACT_SHOT : verdict;
}

/* The tunnel's slow path: the key is set, the VXLAN device sends the packet
 * (to_overlay sees it already accounted). */
static __always_inline int via_device(struct __sk_buff *skb, struct dp_config *cfg)
{
	count(CNT_TUNNELLED_VIA_DEVICE);
	skb->mark |= MARK_TUNNELLED;
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

/* The tunnel's fast path: encapsulated here, straight to the uplink. A traced
 * packet reports its tunnelled hop here, at the overlay device as on the slow
 * path (from_underlay does the same), so a trace reads the same either way; the
 * VNI carries the trace on, so the mark goes before the uplink sees it. */
static __always_inline int encap_and_send(struct __sk_buff *skb, struct pkt *p,
					  struct dp_config *cfg, struct remote_node *rn,
					  __u32 tag, struct trace_ctx *t)
{
	switch (vxlan_encap(skb, p, cfg, rn, tag)) {
	case ENCAP_DONE:
		break;
	case ENCAP_UNCHANGED:
		if (set_tunnel(skb, rn, tag))
			return dropped(DROP_TUNNEL_KEY);
		return via_device(skb, cfg);
	default:
		return dropped(DROP_TUNNEL_KEY);
	}
	count(CNT_TUNNELLED);
	if (t->traced) {
		skb->mark &= ~MARK_TRACE;
		trace_hop(t, TP_TO_OVERLAY, TA_TUNNELLED, 0, 0, cfg->vxlan_ifindex, rn->node_ip,
			  tag);
	}
	return bpf_redirect_neigh(cfg->uplink_ifindex, 0, 0, 0);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct flow_obs obs = {};
	struct trace_ctx t = {};
	struct pkt p;
	struct dp_config *cfg;
	struct endpoint *dst;
	struct remote_node *rn;
	__u8 drop;

	if (parse_ipv4(skb, &p))
		return TC_ACT_OK;
	count(CNT_FROM_POD);
	cfg = dp_config();
	if (!cfg || !cfg->vxlan_ifindex) {
		count(CNT_DROP_NO_CONFIG);
		return TC_ACT_OK;
	}
	trace_from_pod(skb, &p, cfg, &t);
	if (t.traced)
		trace_hop(&t, TP_FROM_POD, TA_RECEIVED, 0, 0, skb->ifindex, 0, 0);
	observe_addrs(&obs, &p, cfg, skb, DIR_EGRESS);
	dst = endpoint_of(cfg, p.daddr);
	if (dst) {
		drop = flow_track(skb, &p, cfg, &obs);
		if (t.traced && trace_policy(&t, cfg, drop, 1, 1, skb->ifindex))
			return dropped(drop);
		if (drop)
			return dropped(drop);
		count(CNT_LOCAL_REDIRECT);
		if (t.traced) {
			trace_hop(&t, TP_TO_POD, TA_DELIVERED, 0, 0, dst->ifindex, 0, 0);
			if (t.flags & TRACE_F_INJECTED)
				return TC_ACT_SHOT;
		}
		return deliver_local(skb, &p, dst);
	}
	rn = remote_of(cfg, p.daddr);
	if (rn) {
		int fast = encap_fits(skb, cfg);

		tunnel(skb, rn, &obs, !fast);
		drop = flow_track(skb, &p, cfg, &obs);
		if (t.traced && trace_policy(&t, cfg, drop, 1, 0, skb->ifindex))
			return dropped(drop);
		if (drop) {
			if (t.traced)
				trace_hop(&t, TP_TO_OVERLAY, TA_DROPPED, drop, 0, cfg->vxlan_ifindex,
					  rn->node_ip, 0);
			return dropped(drop);
		}
		if (fast)
			return encap_and_send(skb, &p, cfg, rn, obs.tag, &t);
		return via_device(skb, cfg);
	}
	drop = flow_track(skb, &p, cfg, &obs);
	if (t.traced && trace_policy(&t, cfg, drop, 1, 0, skb->ifindex))
		return dropped(drop);
	if (drop)
		return dropped(drop);
	count(CNT_TO_STACK);
	if (t.traced && trace_stack(skb, &t))
		return trace_end(&t, TC_ACT_OK);
	return TC_ACT_OK;
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct flow_obs obs = {};
	struct trace_ctx t = {};
	struct dp_config *cfg;
	struct pkt p;
	__u8 drop;

	count(CNT_TO_POD);
	if (parse_ipv4(skb, &p))
		return TC_ACT_OK;
	cfg = dp_config();
	if (!cfg)
		return TC_ACT_OK;
	trace_marked(skb, &p, 0, &t);
	observe_addrs(&obs, &p, cfg, skb, DIR_INGRESS);
	drop = flow_track(skb, &p, cfg, &obs);
	if (t.traced && trace_policy(&t, cfg, drop, 0, 1, skb->ifindex))
		return dropped(drop);
	if (drop)
		return dropped(drop);
	if (t.traced) {
		trace_hop(&t, TP_TO_POD, TA_DELIVERED, 0, 0, skb->ifindex, 0, 0);
		return trace_end(&t, TC_ACT_OK);
	}
	return TC_ACT_OK;
}

/* A packet that came over the overlay, decapsulated: `tag` is its VNI, `remote`
 * the sending node's underlay address (network order), `dst` its local pod if it
 * has one. Accounted and policed, then delivered to its pod or handed to this
 * node's host stack. */
static __always_inline int overlay_rx(struct __sk_buff *skb, struct pkt *p,
				      struct dp_config *cfg, struct endpoint *dst, __u32 tag,
				      __u32 remote, __u32 ifindex)
{
	struct flow_obs obs = {};
	struct trace_ctx t = {};
	__u8 drop = 0;

	count(CNT_FROM_OVERLAY);
	if (tag & TAG_TRACE)
		skb->mark |= MARK_TRACE;
	trace_marked(skb, p, tag & TAG_TRACE, &t);
	if (t.traced)
		trace_hop(&t, TP_FROM_OVERLAY, TA_RECEIVED, 0, 0, ifindex, remote, tag);
	if (cfg) {
		observe_addrs(&obs, p, cfg, skb, DIR_INGRESS);
		/* The sender's identity comes with the packet: no lookup. */
		obs.src_identity = tag & TAG_IDENTITY_MASK;
		obs.tag = tag;
		drop = flow_track(skb, p, cfg, &obs);
		if (t.traced && trace_policy(&t, cfg, drop, 0, dst != 0, ifindex))
			return dropped(drop);
		if (drop)
			return dropped(drop);
	}
	if (!dst) {
		/* For this node's host stack (e.g. a pod's reply to the node): the inner
		 * destination MAC is the sender's gateway, not ours. */
		bpf_skb_change_type(skb, PACKET_HOST);
		count(CNT_TO_STACK);
		if (t.traced && trace_stack(skb, &t))
			return trace_end(&t, TC_ACT_OK);
		return TC_ACT_OK;
	}
	count(CNT_OVERLAY_DELIVERED);
	if (t.traced) {
		trace_hop(&t, TP_TO_POD, TA_DELIVERED, 0, 0, dst->ifindex, 0, 0);
		if (t.flags & TRACE_F_INJECTED)
			return TC_ACT_SHOT;
	}
	return deliver_local(skb, p, dst);
}

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct dp_config *cfg;
	struct pkt p;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &p))
		return TC_ACT_OK;
	cfg = dp_config();
	return overlay_rx(skb, &p, cfg, cfg ? endpoint_of(cfg, p.daddr) : 0, key.tunnel_id,
			  bpf_htonl(key.remote_ipv4), skb->ifindex);
}

/*
 * The fast path of the overlay's receiving side, on the node's uplink: a VXLAN
 * packet for a pod of this node is decapsulated here and delivered as
 * from_overlay would, skipping the host stack's IP and UDP receive, netfilter,
 * the VXLAN device and its GRO cell. TCP GSO packets too (a sender's
 * unsegmented stream, or what GRO merged on a NIC): their gso_size is the inner
 * segments' and stays as it is (BPF_F_ADJ_ROOM_FIXED_GSO), so the kernel can
 * still segment them. Everything else goes on to the VXLAN device and
 * from_overlay unchanged.
 */
SEC("classifier")
int from_underlay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	struct vxlan_hdr *vx = (void *)(udp + 1);
	struct ethhdr *inner_eth = (void *)(vx + 1);
	struct iphdr *inner = (void *)(inner_eth + 1);
	struct dp_config *cfg;
	struct endpoint *dst;
	__u32 tag, remote;
	struct pkt p;

	if ((void *)(inner + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	/* Fragments, and ECN congestion marks (the device carries them inside). */
	if ((ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) || (ip->tos & ECN_MASK) == ECN_CE)
		return TC_ACT_OK;
	cfg = dp_config();
	if (!cfg || !cfg->vxlan_port || udp->dest != bpf_htons(cfg->vxlan_port) ||
	    ip->daddr != cfg->node_ip || vx->flags != bpf_htonl(VXLAN_FLAG_I))
		return TC_ACT_OK;
	if (inner_eth->h_proto != bpf_htons(ETH_P_IP) || inner->version != 4)
		return TC_ACT_OK;
	/* A GSO packet keeps its tunnel GSO bits here (clearing them needs a newer
	 * kernel): harmless for TCP, but a UDP socket would segment inner UDP GSO
	 * as a tunnel packet. Only the device's path clears them. */
	if (skb->gso_size && inner->protocol != IPPROTO_TCP)
		return TC_ACT_OK;
	dst = endpoint_of(cfg, inner->daddr);
	if (!dst)
		return TC_ACT_OK;
	tag = bpf_ntohl(vx->vni) >> 8;
	remote = ip->saddr;
	if (bpf_skb_adjust_room(skb, -(__s32)VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, VXLAN_DECAP_FLAGS))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &p))
		return TC_ACT_SHOT;
	return overlay_rx(skb, &p, cfg, dst, tag, remote, cfg->vxlan_ifindex);
}

/* The tunnelled hop of a traced packet; the VNI carries the trace on, so the
 * mark is cleared before the encapsulated packet meets the uplink. */
static __always_inline void trace_tunnelled(struct __sk_buff *skb, struct pkt *p,
					    struct dp_config *cfg, struct remote_node *rn)
{
	struct trace_ctx t = {};

	trace_marked(skb, p, 0, &t);
	if (!t.traced)
		return;
	skb->mark &= ~MARK_TRACE;
	trace_hop(&t, TP_TO_OVERLAY, TA_TUNNELLED, 0, 0, skb->ifindex, rn->node_ip,
		  make_tag(identity_of_addr(p->saddr, cfg), skb) | TAG_TRACE);
}

SEC("classifier")
int to_overlay(struct __sk_buff *skb)
{
	struct flow_obs obs = {};
	struct trace_ctx t = {};
	struct dp_config *cfg;
	struct remote_node *rn;
	struct pkt p;

	/* Packets from_pod redirected here already carry their key and were accounted. */
	if (skb->mark & MARK_TUNNELLED) {
		skb->mark &= ~MARK_TUNNELLED;
		if ((skb->mark & MARK_TRACE) && !parse_ipv4(skb, &p) && (cfg = dp_config()) &&
		    (rn = remote_of(cfg, p.daddr)))
			trace_tunnelled(skb, &p, cfg, rn);
		return TC_ACT_OK;
	}
	if (parse_ipv4(skb, &p))
		return TC_ACT_SHOT;
	cfg = dp_config();
	rn = cfg ? remote_of(cfg, p.daddr) : 0;
	if (!rn) {
		count(CNT_DROP_TUNNEL_KEY);
		trace_marked(skb, &p, 0, &t);
		if (t.traced)
			trace_hop(&t, TP_TO_OVERLAY, TA_DROPPED, DROP_TUNNEL_KEY, 0, skb->ifindex, 0, 0);
		return TC_ACT_SHOT;
	}
	observe_addrs(&obs, &p, cfg, skb, DIR_EGRESS);
	tunnel(skb, rn, &obs, 1);
	if (flow_track(skb, &p, cfg, &obs)) {
		trace_marked(skb, &p, 0, &t);
		if (t.traced)
			trace_hop(&t, TP_TO_OVERLAY, TA_DROPPED, obs.drop, 0, skb->ifindex, rn->node_ip, 0);
		return dropped(obs.drop);
	}
	count(CNT_HOST_TUNNELLED);
	trace_tunnelled(skb, &p, cfg, rn);
	return TC_ACT_OK;
}

SEC("classifier")
int to_underlay(struct __sk_buff *skb)
{
	struct trace_ctx t = {};
	struct dp_config *cfg;
	struct pkt p;

	/* Only traced packets matter here: the rest pay this one test. */
	if (!(skb->mark & MARK_TRACE))
		return TC_ACT_OK;
	skb->mark &= ~MARK_TRACE;
	if (parse_ipv4(skb, &p))
		return TC_ACT_OK;
	cfg = dp_config();
	if (!cfg)
		return TC_ACT_OK;
	trace_fill(skb, &p, &t);
	trace_hop(&t, TP_MASQUERADE, p.saddr == cfg->node_ip ? TA_MASQUERADED : TA_FORWARDED, 0,
		  0, skb->ifindex, 0, 0);
	return trace_end(&t, TC_ACT_OK);
}

/* The benchmark's references (lumen-bench bpf): nothing at all, and the
 * kernel's own cost of the resizing helper call the overlay paths make. */
SEC("classifier")
int noop(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("classifier")
int grow_only(struct __sk_buff *skb)
{
	if (bpf_skb_adjust_room(skb, VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, VXLAN_ENCAP_FLAGS))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("classifier")
int shrink_only(struct __sk_buff *skb)
{
	if (bpf_skb_adjust_room(skb, -(__s32)VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, VXLAN_DECAP_FLAGS))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
