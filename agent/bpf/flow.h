/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The flow table: every hook accounts each packet to its flow's entry (both
 * directions share one, see struct flow_key), and a flow's end (TCP FIN/RST) or
 * a drop also goes to the ring buffer, within a per-CPU budget, so flows shorter
 * than the agent's drain interval are never missed.
 */
#ifndef LUMEN_FLOW_H
#define LUMEN_FLOW_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"
#include "parse.h"
#include "counters.h"
#include "policy.h"

#define TCP_FIN 0x01
#define TCP_RST 0x04
#define NSEC_PER_SEC 1000000000ull

/* What a hook knows about a packet besides its headers. */
struct flow_obs {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 tag;    /* VXLAN tag set or seen, 0 none */
	__u8 drop;    /* enum drop_reason */
	__u8 traced;
	__u8 dir;     /* enum direction */
};

/* The identity an address has by construction: pods by their offset in the
 * cluster CIDR (as api::Identity::for_pod), the node itself, else the world. */
static __always_inline __u32 identity_of_addr(__u32 addr, struct dp_config *cfg)
{
	if ((addr & cfg->cluster_mask) == cfg->cluster_addr)
		return IDENTITY_POD_BASE + (bpf_ntohl(addr) - bpf_ntohl(cfg->cluster_addr));
	if (addr == cfg->node_ip)
		return IDENTITY_HOST;
	return IDENTITY_WORLD;
}

static __always_inline void account(__u32 idx, __u64 bytes)
{
	struct traffic *t = bpf_map_lookup_elem(&traffic, &idx);

	if (t) {
		t->packets += 1;
		t->bytes += bytes;
	}
}

/* The coarse clock (CLOCK_MONOTONIC at the last tick): it only changes when
 * jiffies do, so each CPU reads it once per tick and keeps it. */
static __always_inline __u64 coarse_now(void)
{
	__u32 zero = 0;
	struct tick_clock *c = bpf_map_lookup_elem(&tick_clock, &zero);
	__u64 jiffies = bpf_jiffies64();

	if (!c)
		return bpf_ktime_get_coarse_ns();
	if (c->jiffies != jiffies) {
		c->ns = bpf_ktime_get_coarse_ns();
		c->jiffies = jiffies;
	}
	return c->ns;
}

/* Within this CPU's event budget for the current second? */
static __always_inline int event_allowed(struct dp_config *cfg, __u64 now)
{
	__u32 zero = 0;
	struct event_budget *b = bpf_map_lookup_elem(&event_budget, &zero);

	if (!b)
		return 0;
	if (now - b->window_ns >= NSEC_PER_SEC) {
		b->window_ns = now;
		b->used = 0;
	}
	if (b->used >= cfg->events_per_sec) {
		count(CNT_EVENTS_RATE_LIMITED);
		return 0;
	}
	b->used += 1;
	return 1;
}

static __always_inline void emit_event(struct __sk_buff *skb, struct flow_key *key,
				       struct flow_value *v, __u32 kind,
				       struct dp_config *cfg, __u64 now)
{
	struct flow_event *e;

	if (!event_allowed(cfg, now))
		return;
	e = bpf_ringbuf_reserve(&flow_events, sizeof(*e), 0);
	if (!e) {
		count(CNT_EVENTS_LOST);
		return;
	}
	__builtin_memcpy(&e->key, key, sizeof(*key));
	__builtin_memcpy(&e->value, v, sizeof(*v));
	e->kind = kind;
	e->ifindex = skb->ifindex;
	bpf_ringbuf_submit(e, 0);
	count(CNT_EVENTS);
}

/* Decide the flow's policy verdict for the policy epoch in force. */
static __always_inline void flow_policy(struct flow_key *key, struct flow_value *v, __u32 epoch)
{
	__u16 rule[2];
	__u32 from, to;
	__u16 port;
	int denied;

	if (v->tag & FLOW_F_SIDE1_FIRST) {
		from = key->addr[1];
		to = key->addr[0];
		port = key->port[0];
	} else {
		from = key->addr[0];
		to = key->addr[1];
		port = key->port[1];
	}
	if (key->proto != IPPROTO_TCP && key->proto != IPPROTO_UDP && key->proto != IPPROTO_SCTP)
		port = 0;
	denied = policy_decide(from, to, key->proto, bpf_ntohs(port), rule);
	v->rule[POL_INGRESS] = rule[POL_INGRESS];
	v->rule[POL_EGRESS] = rule[POL_EGRESS];
	__sync_fetch_and_and(&v->tag, ~(FLOW_F_DENIED | FLOW_EPOCH_MASK));
	__sync_fetch_and_or(&v->tag, (denied ? FLOW_F_DENIED : 0) |
					     ((epoch << FLOW_EPOCH_SHIFT) & FLOW_EPOCH_MASK));
}

/*
 * Account one packet (a GSO packet counts as its segments) to its flow, and
 * decide it against NetworkPolicy. Returns the packet's drop reason: the one the
 * caller already had (obs->drop), DROP_POLICY, or 0 to forward.
 */
static __always_inline __u8 flow_track(struct __sk_buff *skb, struct pkt *p,
				       struct dp_config *cfg, struct flow_obs *obs)
{
	struct flow_key key = {};
	struct flow_value *v;
	__u64 now, bytes, moved;
	__u32 segs, side;

	if (cfg->flags & CFG_NO_FLOWS)
		return obs->drop;
	parse_l4(skb, p);
	segs = skb->gso_segs;
	if (segs == 0)
		segs = 1;
	bytes = skb->len - ETH_HLEN + (__u64)(segs - 1) * p->hdr_len;
	moved = (__u64)(__u32)bytes << 32 | segs;
	side = bpf_ntohl(p->saddr) > bpf_ntohl(p->daddr) ||
	       (p->saddr == p->daddr && bpf_ntohs(p->sport) > bpf_ntohs(p->dport));
	/* Constant indexes only: the verifier rejects variable offsets into the stack. */
	if (side) {
		key.addr[0] = p->daddr;
		key.addr[1] = p->saddr;
		key.port[0] = p->dport;
		key.port[1] = p->sport;
	} else {
		key.addr[0] = p->saddr;
		key.addr[1] = p->daddr;
		key.port[0] = p->sport;
		key.port[1] = p->dport;
	}
	key.proto = p->proto;

	v = bpf_map_lookup_elem(&flows, &key);
	/* The exact time where a record or event reports it: a flow's first packet,
	 * its end, a drop. Other packets only move last_ns on, by the tick. */
	if (!v || obs->drop || (p->tcp_flags & (TCP_FIN | TCP_RST)))
		now = bpf_ktime_get_ns();
	else
		now = coarse_now();
	if (!v) {
		struct flow_value init = {};
		__u32 src = obs->src_identity & SIDE_IDENTITY_MASK;
		__u32 dst = obs->dst_identity & SIDE_IDENTITY_MASK;

		init.last_ns = now;
		init.first_us = (__u32)(now / 1000);
		init.first_seq = p->proto == IPPROTO_TCP ? p->seq : bpf_ntohs(p->ip->id);
		init.side[0] = side ? dst : src;
		init.side[1] = side ? src : dst;
		init.tag = side ? FLOW_F_SIDE1_FIRST : 0;
		/* Another CPU may insert the same flow first: then use its entry. */
		if (bpf_map_update_elem(&flows, &key, &init, BPF_NOEXIST) == 0)
			count(CNT_FLOWS_CREATED);
		v = bpf_map_lookup_elem(&flows, &key);
		if (!v) {
			count(CNT_FLOW_TABLE_FULL);
			return obs->drop;
		}
	}
	if (cfg->flags & CFG_POLICY) {
		if (((v->tag & FLOW_EPOCH_MASK) >> FLOW_EPOCH_SHIFT) != cfg->policy_epoch)
			flow_policy(&key, v, cfg->policy_epoch);
		if ((v->tag & FLOW_F_DENIED) && !obs->drop)
			obs->drop = DROP_POLICY;
	}
	account(obs->dir * DROP_MAX, bytes);
	if (obs->drop && obs->drop < DROP_MAX)
		account(obs->dir * DROP_MAX + obs->drop, bytes);
	/* Constant indexes only (see above). A side's TCP flags are set once each:
	 * the atomic OR only when one is new. */
	if (side) {
		__sync_fetch_and_add(&v->count[1], moved);
		if (~v->side[1] & ((__u32)p->tcp_flags << SIDE_FLAGS_SHIFT))
			__sync_fetch_and_or(&v->side[1], (__u32)p->tcp_flags << SIDE_FLAGS_SHIFT);
	} else {
		__sync_fetch_and_add(&v->count[0], moved);
		if (~v->side[0] & ((__u32)p->tcp_flags << SIDE_FLAGS_SHIFT))
			__sync_fetch_and_or(&v->side[0], (__u32)p->tcp_flags << SIDE_FLAGS_SHIFT);
	}
	if (now > v->last_ns)
		v->last_ns = now;
	{
		/* One store for VNI, flags and verdict; a concurrent update of the same
		 * word on another CPU may win, which only loses a flag it also sets. */
		__u32 tag = v->tag & (FLOW_F_SIDE1_FIRST | FLOW_F_TRACED | FLOW_F_OVERLAY |
				      FLOW_F_DENIED | FLOW_EPOCH_MASK | TAG_VNI_MASK);

		if (obs->tag)
			tag = (tag & ~TAG_VNI_MASK) | (obs->tag & TAG_VNI_MASK) | FLOW_F_OVERLAY;
		if (obs->traced)
			tag |= FLOW_F_TRACED;
		tag |= ((__u32)obs->drop << TAG_DROP_SHIFT) & TAG_DROP_MASK;
		if (tag != v->tag)
			v->tag = tag;
	}

	if (obs->drop)
		emit_event(skb, &key, v, EVENT_DROP, cfg, now);
	else if (p->tcp_flags & (TCP_FIN | TCP_RST))
		emit_event(skb, &key, v, EVENT_END, cfg, now);
	return obs->drop;
}

#endif
