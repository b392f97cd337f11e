/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * NetworkPolicy in the datapath: once per flow (and again after the agent marks
 * flows for re-evaluation), decide the flow from its initiator's point of view —
 * egress where the initiator is a local pod, ingress where the responder is — and
 * keep the verdict and the deciding rules in the flow entry. Replies of an
 * allowed flow pass because the flow is allowed: the datapath is stateful.
 */
#ifndef LUMEN_POLICY_H
#define LUMEN_POLICY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

static __always_inline int port_matches(struct policy_rule *r, __u8 proto, __u16 port)
{
	int i;

	if (r->nports == 0)
		return 1;
	for (i = 0; i < RULE_PORTS; i++) {
		if (i >= r->nports)
			return 0;
		if (r->ports[i].proto == proto && r->ports[i].from <= port && port <= r->ports[i].to)
			return 1;
	}
	return 0;
}

/* The id of the first of `count` rules from `first` that admits `peer` on
 * (`proto`, `port`), or 0. A global function: the verifier checks it once, not
 * at every call site (each hook decides policy in several places, and a static
 * copy per site made loading take seconds). */
__noinline __u32 match_rules(__u32 first, __u32 count, __u32 peer, __u32 proto, __u32 port)
{
	__u32 i;

	for (i = 0; i < MAX_RULES_PER_DIRECTION; i++) {
		struct peer_key k = {};
		struct policy_rule *r;
		__u32 slot = first + i;
		__u32 *in;

		if (i >= count)
			break;
		r = bpf_map_lookup_elem(&policy_rules, &slot);
		if (!r)
			break;
		if (!port_matches(r, (__u8)proto, (__u16)port))
			continue;
		k.prefixlen = 64;
		k.slot = slot;
		k.addr = peer;
		in = bpf_map_lookup_elem(&policy_peers, &k);
		if (in && *in)
			return r->id;
	}
	return 0;
}

/* Decide a flow: `from` opened it to `to` on (`proto`, `port` host order). Fills
 * rule[POL_INGRESS], rule[POL_EGRESS]; returns which directions deny it
 * (1 << POL_INGRESS | 1 << POL_EGRESS), 0 if allowed. */
static __always_inline int policy_decide(__u32 from, __u32 to, __u8 proto, __u16 port,
					 __u16 rule[2])
{
	struct ep_policy *ep;
	int denied = 0;
	__u32 id;

	rule[POL_INGRESS] = 0;
	rule[POL_EGRESS] = 0;
	ep = bpf_map_lookup_elem(&ep_policy, &from);
	if (ep && (ep->isolated & POL_ISOLATED_EGRESS)) {
		id = match_rules(ep->first[POL_EGRESS], ep->count[POL_EGRESS], to, proto, port);
		if (!id) {
			id = ep->deny_rule[POL_EGRESS];
			denied |= 1 << POL_EGRESS;
		}
		rule[POL_EGRESS] = (__u16)id;
	}
	ep = bpf_map_lookup_elem(&ep_policy, &to);
	if (ep && (ep->isolated & POL_ISOLATED_INGRESS)) {
		id = match_rules(ep->first[POL_INGRESS], ep->count[POL_INGRESS], from, proto, port);
		if (!id) {
			id = ep->deny_rule[POL_INGRESS];
			denied |= 1 << POL_INGRESS;
		}
		rule[POL_INGRESS] = (__u16)id;
	}
	return denied;
}

#endif
