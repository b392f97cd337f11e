// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Lumen's datapath entry points. Each is thin: parse, decide (forward.h), account
 * the packet to its flow (flow.h), act. Attached as tc (clsact) filters:
 *   from_pod     host veth ingress  (what the pod sends)
 *   to_pod       host veth egress   (what the host stack sends into the pod)
 *   from_overlay VXLAN ingress      (decapsulated packets from other nodes)
 *   to_overlay   VXLAN egress       (host-stack packets routed to remote pod CIDRs)
 * Packets redirected between these hooks skip the host stack and the egress hook
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

/* Set the tunnel key toward `rn` with the sender's tag; the flow learns the tag,
 * or that the packet is to be dropped. */
static __always_inline void tunnel(struct __sk_buff *skb, struct remote_node *rn,
				   struct flow_obs *obs)
{
	__u32 tag = make_tag(obs->src_identity, skb);

	if (set_tunnel(skb, rn, tag))
		obs->drop = DROP_TUNNEL_KEY;
	else
		obs->tag = tag;
}

/* Count a drop by its reason and drop. */
static __always_inline int dropped(__u8 reason)
{
	count(reason == DROP_POLICY ? CNT_DROP_POLICY : CNT_DROP_TUNNEL_KEY);
	return TC_ACT_SHOT;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct flow_obs obs = {};
	struct pkt p;
	struct dp_config *cfg;
	struct endpoint *dst;
	struct remote_node *rn;

	if (parse_ipv4(skb, &p))
		return TC_ACT_OK;
	count(CNT_FROM_POD);
	cfg = dp_config();
	if (!cfg || !cfg->vxlan_ifindex) {
		count(CNT_DROP_NO_CONFIG);
		return TC_ACT_OK;
	}
	observe_addrs(&obs, &p, cfg, skb, DIR_EGRESS);
	dst = endpoint_of(p.daddr);
	if (dst) {
		if (flow_track(skb, &p, cfg, &obs))
			return dropped(obs.drop);
		count(CNT_LOCAL_REDIRECT);
		return deliver_local(skb, &p, dst);
	}
	rn = remote_of(p.daddr);
	if (rn) {
		tunnel(skb, rn, &obs);
		if (flow_track(skb, &p, cfg, &obs))
			return dropped(obs.drop);
		count(CNT_TUNNELLED);
		skb->mark |= MARK_TUNNELLED;
		return bpf_redirect(cfg->vxlan_ifindex, 0);
	}
	if (flow_track(skb, &p, cfg, &obs))
		return dropped(obs.drop);
	count(CNT_TO_STACK);
	return TC_ACT_OK;
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct flow_obs obs = {};
	struct dp_config *cfg;
	struct pkt p;

	count(CNT_TO_POD);
	if (parse_ipv4(skb, &p))
		return TC_ACT_OK;
	cfg = dp_config();
	if (!cfg)
		return TC_ACT_OK;
	observe_addrs(&obs, &p, cfg, skb, DIR_INGRESS);
	if (flow_track(skb, &p, cfg, &obs))
		return dropped(obs.drop);
	return TC_ACT_OK;
}

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct flow_obs obs = {};
	struct dp_config *cfg;
	struct endpoint *dst;
	struct pkt p;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return TC_ACT_OK;
	count(CNT_FROM_OVERLAY);
	if (key.tunnel_id & TAG_TRACE)
		skb->mark |= MARK_TRACE;
	if (parse_ipv4(skb, &p))
		return TC_ACT_OK;
	cfg = dp_config();
	if (cfg) {
		observe_addrs(&obs, &p, cfg, skb, DIR_INGRESS);
		/* The sender's identity comes with the packet: no lookup. */
		obs.src_identity = key.tunnel_id & TAG_IDENTITY_MASK;
		obs.tag = key.tunnel_id;
		if (flow_track(skb, &p, cfg, &obs))
			return dropped(obs.drop);
	}
	dst = endpoint_of(p.daddr);
	if (!dst) {
		/* For this node's host stack (e.g. a pod's reply to the node): the inner
		 * destination MAC is the sender's gateway, not ours. */
		bpf_skb_change_type(skb, PACKET_HOST);
		count(CNT_TO_STACK);
		return TC_ACT_OK;
	}
	count(CNT_OVERLAY_DELIVERED);
	return deliver_local(skb, &p, dst);
}

SEC("classifier")
int to_overlay(struct __sk_buff *skb)
{
	struct flow_obs obs = {};
	struct dp_config *cfg;
	struct remote_node *rn;
	struct pkt p;

	/* Packets from_pod redirected here already carry their key and were accounted. */
	if (skb->mark & MARK_TUNNELLED) {
		skb->mark &= ~MARK_TUNNELLED;
		return TC_ACT_OK;
	}
	if (parse_ipv4(skb, &p))
		return TC_ACT_SHOT;
	cfg = dp_config();
	rn = remote_of(p.daddr);
	if (!cfg || !rn) {
		count(CNT_DROP_TUNNEL_KEY);
		return TC_ACT_SHOT;
	}
	observe_addrs(&obs, &p, cfg, skb, DIR_EGRESS);
	tunnel(skb, rn, &obs);
	if (flow_track(skb, &p, cfg, &obs))
		return dropped(obs.drop);
	count(CNT_HOST_TUNNELLED);
	return TC_ACT_OK;
}

SEC("classifier")
int noop(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
