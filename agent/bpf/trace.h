/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Traceflow in the datapath: decide whether a packet is traced (an injected
 * packet registered in trace_packets, the packet a live trace waits for, the
 * trace bit of the VNI, MARK_TRACE on this node) and write one trace_event per
 * hop it passes. Untraced packets pay one flag test (and with a live trace
 * armed, one lookup in from_pod).
 */
#ifndef LUMEN_TRACE_H
#define LUMEN_TRACE_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"
#include "parse.h"
#include "counters.h"
#include "policy.h"

#define TCP_SYN 0x02
#define TCP_ACK 0x10
#ifndef AF_INET
#define AF_INET 2
#endif

/* A traced packet as the hooks of this node report it. */
struct trace_ctx {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u16 ip_id;
	__u8 proto;
	__u8 traced;
	__u32 id;
	__u32 flags; /* TRACE_F_* */
};

/* Copy what identifies the packet; the caller knows it is traced. */
static __always_inline void trace_fill(struct __sk_buff *skb, struct pkt *p, struct trace_ctx *t)
{
	parse_l4(skb, p);
	t->saddr = p->saddr;
	t->daddr = p->daddr;
	t->sport = p->sport;
	t->dport = p->dport;
	t->ip_id = p->ip->id;
	t->proto = p->proto;
	t->traced = 1;
	if (p->ip->frag_off & bpf_htons(IP_RF))
		t->flags |= TRACE_F_INJECTED;
}

/* A live trace armed on the sending pod that this packet satisfies. */
static __always_inline int live_match(struct __sk_buff *skb, struct pkt *p, struct trace_ctx *t)
{
	struct live_trace *lt = bpf_map_lookup_elem(&trace_live, &p->saddr);

	if (!lt || !lt->armed)
		return 0;
	parse_l4(skb, p);
	if (lt->proto && lt->proto != p->proto)
		return 0;
	if ((p->daddr & lt->dmask) != lt->daddr)
		return 0;
	if ((lt->dport && lt->dport != p->dport) || (lt->sport && lt->sport != p->sport))
		return 0;
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN)
		return 0;
	/* One packet per trace, unless it waits for a dropped one. */
	if (!(lt->flags & LIVE_F_DROPPED_ONLY) && __sync_val_compare_and_swap(&lt->armed, 1, 0) != 1)
		return 0;
	t->id = lt->trace_id;
	return 1;
}

/* from_pod: is this packet traced? Marks it for the node's later hooks. */
static __always_inline void trace_from_pod(struct __sk_buff *skb, struct pkt *p,
					   struct dp_config *cfg, struct trace_ctx *t)
{
	if (p->ip->frag_off & bpf_htons(IP_RF)) {
		struct trace_key key = {};
		__u32 *id;

		parse_l4(skb, p);
		key.saddr = p->saddr;
		key.daddr = p->daddr;
		key.sport = p->sport;
		key.dport = p->dport;
		key.ip_id = p->ip->id;
		key.proto = p->proto;
		id = bpf_map_lookup_elem(&trace_packets, &key);
		if (!id)
			return;
		t->id = *id;
	} else if (!(cfg->flags & CFG_LIVE_TRACE) || !live_match(skb, p, t)) {
		return;
	}
	trace_fill(skb, p, t);
	skb->mark |= MARK_TRACE;
}

/* Any other hook: traced if this node marked it or the VNI says so. */
static __always_inline void trace_marked(struct __sk_buff *skb, struct pkt *p, int vni_traced,
					 struct trace_ctx *t)
{
	if (vni_traced || (skb->mark & MARK_TRACE))
		trace_fill(skb, p, t);
}

/* One observation. */
static __always_inline void trace_hop(struct trace_ctx *t, __u8 point, __u8 action, __u8 reason,
				      __u16 rule, __u32 ifindex, __u32 remote, __u32 tag)
{
	struct trace_event e = {};

	e.ts_ns = bpf_ktime_get_ns();
	e.saddr = t->saddr;
	e.daddr = t->daddr;
	e.sport = t->sport;
	e.dport = t->dport;
	e.ip_id = t->ip_id;
	e.proto = t->proto;
	e.point = point;
	e.action = action;
	e.reason = reason;
	e.rule = rule;
	e.ifindex = ifindex;
	e.tunnel_remote = remote;
	e.tag = tag;
	e.trace_id = t->id;
	e.flags = t->flags;
	if (bpf_ringbuf_output(&trace_events, &e, sizeof(e), 0))
		count(CNT_TRACE_LOST);
	else
		count(CNT_TRACE_EVENTS);
}

/*
 * The policy hops of a traced packet on this node: egress when the sender is a
 * local pod, ingress when the receiver is. `drop` is what the flow tracker
 * decided; the per-direction rules come from the same maps. Returns non-zero
 * when a policy hop dropped it.
 */
static __always_inline int trace_policy(struct trace_ctx *t, struct dp_config *cfg, __u8 drop,
					int egress_here, int ingress_here, __u32 ifindex)
{
	__u16 rule[2] = {};
	__u16 port = 0;
	int denied = 0;

	if (t->proto == IPPROTO_TCP || t->proto == IPPROTO_UDP || t->proto == IPPROTO_SCTP)
		port = bpf_ntohs(t->dport);
	if (cfg->flags & CFG_POLICY) {
		denied = policy_decide(t->saddr, t->daddr, t->proto, port, rule);
		if (drop != DROP_POLICY)
			denied = 0;
	}
	if (egress_here) {
		if (denied & (1 << POL_EGRESS)) {
			trace_hop(t, TP_POLICY_EGRESS, TA_DROPPED, DROP_POLICY, rule[POL_EGRESS], ifindex, 0, 0);
			return 1;
		}
		trace_hop(t, TP_POLICY_EGRESS, TA_FORWARDED, 0, rule[POL_EGRESS], ifindex, 0, 0);
	}
	if (ingress_here) {
		if (denied & (1 << POL_INGRESS)) {
			trace_hop(t, TP_POLICY_INGRESS, TA_DROPPED, DROP_POLICY, rule[POL_INGRESS], ifindex, 0, 0);
			return 1;
		}
		trace_hop(t, TP_POLICY_INGRESS, TA_FORWARDED, 0, rule[POL_INGRESS], ifindex, 0, 0);
	}
	return 0;
}

/*
 * A traced packet handed to this node's stack: where will the stack take it?
 * Reports the host-stack hop; returns non-zero when the path ends here
 * (delivered to the node itself, or no route).
 */
static __always_inline int trace_stack(struct __sk_buff *skb, struct trace_ctx *t)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	fib.family = AF_INET;
	fib.l4_protocol = t->proto;
	fib.sport = t->sport;
	fib.dport = t->dport;
	fib.tot_len = (__u16)(skb->len > 14 ? skb->len - 14 : 0);
	fib.ifindex = skb->ifindex;
	fib.ipv4_src = t->saddr;
	fib.ipv4_dst = t->daddr;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		trace_hop(t, TP_HOST_STACK, TA_DELIVERED, 0, 0, skb->ifindex, 0, 0);
		return 1;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		trace_hop(t, TP_HOST_STACK, TA_DROPPED, TRACE_DROP_NO_ROUTE, 0, skb->ifindex, 0, 0);
		return 1;
	default:
		trace_hop(t, TP_HOST_STACK, TA_FORWARDED, 0, 0, fib.ifindex, 0, 0);
		return 0;
	}
}

#endif
