// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Lumen's datapath entry points. Each is thin: parse, then the helpers in
 * forward.h decide. Attached with tc (TCX):
 *   from_pod     host veth ingress  (what the pod sends)
 *   to_pod       host veth egress   (what the host stack sends into the pod)
 *   from_overlay VXLAN ingress      (decapsulated packets from other nodes)
 *   to_overlay   VXLAN egress       (host-stack packets routed to remote pod CIDRs)
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_packet.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "counters.h"
#include "forward.h"

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
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
	dst = endpoint_of(p.daddr);
	if (dst) {
		count(CNT_LOCAL_REDIRECT);
		return deliver_local(skb, &p, dst);
	}
	rn = remote_of(p.daddr);
	if (rn) {
		if (set_tunnel(skb, rn, make_tag(identity_of(p.saddr, cfg), skb))) {
			count(CNT_DROP_TUNNEL_KEY);
			return TC_ACT_SHOT;
		}
		count(CNT_TUNNELLED);
		return bpf_redirect(cfg->vxlan_ifindex, 0);
	}
	count(CNT_TO_STACK);
	return TC_ACT_OK;
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	count(CNT_TO_POD);
	return TC_ACT_OK;
}

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct endpoint *dst;
	struct pkt p;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return TC_ACT_OK;
	count(CNT_FROM_OVERLAY);
	if (key.tunnel_id & TAG_TRACE)
		skb->mark |= MARK_TRACE;
	if (parse_ipv4(skb, &p))
		return TC_ACT_OK;
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
	struct bpf_tunnel_key key = {};
	struct dp_config *cfg;
	struct remote_node *rn;
	struct pkt p;

	/* Packets from_pod redirected here already carry their key. */
	if (!bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) && key.remote_ipv4)
		return TC_ACT_OK;
	if (parse_ipv4(skb, &p))
		return TC_ACT_SHOT;
	cfg = dp_config();
	rn = remote_of(p.daddr);
	if (!cfg || !rn || set_tunnel(skb, rn, make_tag(identity_of(p.saddr, cfg), skb))) {
		count(CNT_DROP_TUNNEL_KEY);
		return TC_ACT_SHOT;
	}
	count(CNT_HOST_TUNNELLED);
	return TC_ACT_OK;
}

SEC("classifier")
int noop(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
