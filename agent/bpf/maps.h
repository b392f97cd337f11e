/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one definition of the kernel/user-space contract: every map, key, value and
 * constant the agent shares with the datapath. Rust mirrors live in
 * agent/src/datapath/abi.rs and a test checks sizes and offsets against this file.
 * No implicit padding: every struct is a multiple of 4 bytes, flags are __u32.
 */
#ifndef LUMEN_MAPS_H
#define LUMEN_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* The VXLAN VNI is the flow tag: bit 23 = trace, bits 0..22 = source identity. */
#define TAG_TRACE (1u << 23)
#define TAG_IDENTITY_MASK (TAG_TRACE - 1)

/* Reserved identities (api::Identity). */
#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2

/* skb->mark bit carrying the trace flag on a node. */
#define MARK_TRACE 0x00800000u
/* skb->mark bit: from_pod set the tunnel key and accounted the packet already.
 * (to_overlay cannot tell from bpf_skb_get_tunnel_key: it fails there.) */
#define MARK_TUNNELLED 0x00400000u

#define MAX_ENDPOINTS 65536
#define MAX_REMOTE_CIDRS 4096
/* Slots of remote_slots: a cluster CIDR of up to 4096 node CIDRs. */
#define MAX_REMOTE_SLOTS 4096
/* Defaults; the agent may resize both at load time. */
#define MAX_FLOWS 131072
#define FLOW_EVENTS_BYTES (256 * 1024)

/* First identity handed to pods (api::Identity::POD_BASE). */
#define IDENTITY_POD_BASE 256

/* dp_config.flags */
#define CFG_NO_FLOWS 1u /* flow tracking off (benchmarks measure its cost) */
#define CFG_POLICY 2u   /* some endpoint is isolated: evaluate NetworkPolicy */
#define CFG_LIVE_TRACE 4u /* a live trace is armed: from_pod looks its pod up in trace_live */
#define CFG_REMOTE_TRIE 8u /* remote_cidrs holds a CIDR remote_slots cannot: look there too */

/* A pod attached to this node, in slot (its address − the first address of the
 * node's pod CIDR) of `endpoints`; ifindex 0 marks an empty slot. */
struct endpoint {
	__u32 ifindex;     /* host-side veth */
	__u32 identity;    /* cluster-wide, carried in the tag */
	__u8 mac[6];       /* pod interface */
	__u8 host_mac[6];  /* host-side veth */
	__u32 flags;
};

/* LPM key for remote pod CIDRs: prefix length then the address (network order). */
struct lpm_v4_key {
	__u32 prefixlen;
	__u32 addr;
};

/* The node that owns a remote pod CIDR. */
struct remote_node {
	__u32 node_ip; /* underlay address, network order */
	__u32 flags;
};

/* Node-wide settings, a single entry at index 0. */
struct dp_config {
	__u32 vxlan_ifindex;
	__u32 node_ip;      /* network order */
	__u32 cluster_addr; /* network order */
	__u32 cluster_mask; /* network order */
	__u32 flags;        /* CFG_* */
	__u32 events_per_sec; /* ring-buffer events each CPU may emit a second */
	__u32 policy_epoch; /* 1..3, advanced on every policy change: older verdicts are re-decided */
	__u32 vxlan_port;   /* host order; 0 until the uplink's programs are attached,
			     * and until then neither overlay fast path runs */
	__u32 uplink_ifindex; /* where from_pod sends what it encapsulates */
	__u32 uplink_mtu;   /* the uplink's MTU when its programs were attached */
	__u32 pod_addr;     /* this node's pod CIDR, network order: every endpoint is in it */
	__u32 pod_mask;     /* network order */
	__u32 slot_shift;   /* 32 - the pod CIDRs' prefix length: an address's
			     * remote_slots index is its cluster offset >> this;
			     * 0 while the cluster has more node CIDRs than slots */
};

/* Why the datapath dropped a packet (api::DropReason codes); 0 = forwarded. */
enum drop_reason {
	DROP_NONE = 0,
	DROP_POLICY = 1,
	DROP_TUNNEL_KEY = 2,
	DROP_NO_CONFIG = 3,
	DROP_MAX = 4,
};

/*
 * A flow, keyed by its 5-tuple in canonical order so both directions share one
 * entry: (addr[0], port[0]) is the numerically lower endpoint. Side 0 is addr[0].
 */
struct flow_key {
	__u32 addr[2]; /* network order */
	__u16 port[2]; /* network order; ICMP echo: the id on both sides */
	__u8 proto;
	__u8 _pad[3];
};

/* flow_value.side[i]: the side's identity in the low bits, the TCP flags it sent on top. */
#define SIDE_IDENTITY_MASK 0x00ffffffu
#define SIDE_FLAGS_SHIFT 24

/* flow_value.tag: the last VNI in the low bits, FLOW_F_* and the drop reason on top. */
#define TAG_VNI_MASK 0x00ffffffu
#define FLOW_F_SIDE1_FIRST (1u << 24) /* side 1 sent the first packet seen */
#define FLOW_F_TRACED (1u << 25)      /* a packet carried the trace bit */
#define FLOW_F_OVERLAY (1u << 26)     /* packets crossed the overlay */
#define FLOW_F_DENIED (1u << 27)      /* policy denies the flow (both directions) */
#define FLOW_EPOCH_SHIFT 28           /* policy epoch of the verdict in `rule`; 0 never */
#define FLOW_EPOCH_MASK (0x3u << FLOW_EPOCH_SHIFT)
#define TAG_DROP_SHIFT 30             /* enum drop_reason of the last packet */
#define TAG_DROP_MASK (0x3u << TAG_DROP_SHIFT)

/*
 * What the datapath knows of a flow, in 48 bytes: with the 16-byte key and the
 * kernel's own 48 bytes an LRU element is 112 bytes, and the hash table's bucket
 * array adds 16 a slot: 128 bytes a flow. A side's packets and bytes share one
 * 64-bit word, bytes on top, so one atomic add counts a packet: a carry out of
 * the packets moves into the bytes, and the difference of two readings still
 * splits exactly into both (fewer than 2^32 packets apart). Each wraps at 32
 * bits; the agent reads the table every second or so and keeps 64-bit totals.
 */
struct flow_value {
	__u64 last_ns;    /* monotonic time of the last packet: exact at the first, at
			   * FIN/RST and drops, else the tick's; never moves back */
	__u32 first_us;   /* low 32 bits of the first packet's time in microseconds */
	__u32 first_seq;  /* TCP: sequence number of the first packet; else its IPv4 id */
	__u64 count[2];   /* side 0, side 1: IP bytes sent << 32 | packets sent */
	__u32 side[2];    /* identity | TCP flags << SIDE_FLAGS_SHIFT, per side */
	__u32 tag;        /* VNI | FLOW_F_* | drop reason << TAG_DROP_SHIFT */
	__u16 rule[2];    /* handle of the deciding rule (or default deny), [POL_INGRESS], [POL_EGRESS]; 0 no policy */
};

/* Ring-buffer records: the flow as it was when its end (FIN/RST) or a drop was seen. */
enum flow_event_kind {
	EVENT_END = 1,
	EVENT_DROP = 2,
};

struct flow_event {
	struct flow_key key;
	struct flow_value value;
	__u32 kind;    /* enum flow_event_kind */
	__u32 ifindex; /* where it was seen */
};

/* Per-CPU budget of ring-buffer events. */
struct event_budget {
	__u64 window_ns;
	__u32 used;
	__u32 _pad;
};

/* Per-CPU totals of what the flow tracker saw, and drops by reason. */
struct traffic {
	__u64 packets;
	__u64 bytes;
};

/* Indexes of the per-CPU packet counters. */
enum counter {
	CNT_FROM_POD = 0,
	CNT_LOCAL_REDIRECT = 1,
	CNT_TUNNELLED = 2,          /* encapsulated in BPF, sent to the uplink */
	CNT_FROM_OVERLAY = 3,
	CNT_OVERLAY_DELIVERED = 4,
	CNT_TO_STACK = 5,
	CNT_TO_POD = 6,
	CNT_HOST_TUNNELLED = 7,
	CNT_DROP_NO_CONFIG = 8,
	CNT_DROP_TUNNEL_KEY = 9,
	CNT_FLOWS_CREATED = 10,
	CNT_FLOW_TABLE_FULL = 11,   /* a new flow could not be inserted */
	CNT_EVENTS = 12,            /* ring-buffer events written */
	CNT_EVENTS_RATE_LIMITED = 13,
	CNT_EVENTS_LOST = 14,       /* the ring buffer was full */
	CNT_DROP_POLICY = 15,
	CNT_TRACE_EVENTS = 16,      /* trace observations written */
	CNT_TRACE_LOST = 17,        /* trace observations lost: the ring buffer was full */
	CNT_TUNNELLED_VIA_DEVICE = 18, /* tunnel key set, sent through the VXLAN device */
	CNT_MAX = 19,
};

/* An array, not a hash: the lookup is an index the verifier inlines. A pod CIDR
 * of more than MAX_ENDPOINTS addresses is refused. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint);
} endpoints SEC(".maps");

/* Remote nodes by where their pod CIDR sits in the cluster CIDR, for the
 * CIDRs as big as this node's (a cluster's node CIDRs usually all are):
 * node_ip 0 = no node. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_REMOTE_SLOTS);
	__type(key, __u32);
	__type(value, struct remote_node);
} remote_slots SEC(".maps");

/* The remote pod CIDRs remote_slots has no slot for. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_REMOTE_CIDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, struct remote_node);
} remote_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FLOW_EVENTS_BYTES);
} flow_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_budget);
} event_budget SEC(".maps");

/* Per-CPU: the coarse clock as it read when jiffies last moved on here, so a
 * packet reads it with a load (bpf_jiffies64 is inlined) rather than a call. */
struct tick_clock {
	__u64 jiffies;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tick_clock);
} tick_clock SEC(".maps");

/* Directions of the traffic counters. */
enum direction {
	DIR_EGRESS = 0,  /* from_pod, to_overlay: leaving a pod or the node */
	DIR_INGRESS = 1, /* from_overlay, to_pod: toward a pod or the node */
	DIR_MAX = 2,
};

/* Index d * DROP_MAX: every packet of direction d the flow tracker saw;
 * index d * DROP_MAX + r: those dropped for reason r. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DIR_MAX * DROP_MAX);
	__type(key, __u32);
	__type(value, struct traffic);
} traffic SEC(".maps");

/*
 * NetworkPolicy, compiled by the agent. An endpoint isolated for a direction has
 * its rules in `policy_rules[first .. first + count)`; a rule matches a peer
 * address through `policy_peers` (LPM keyed by the rule's slot, so `except`
 * blocks are longer prefixes with `match = 0`) and a port through its ranges.
 * Rules are named by 16-bit handles (0 = none) that the agent gives the rule
 * ids and default denies of this node's endpoints (datapath/policy.rs); flow
 * entries and trace events carry them.
 */
#define POL_INGRESS 0
#define POL_EGRESS 1
#define POL_ISOLATED_INGRESS 1u
#define POL_ISOLATED_EGRESS 2u
#define MAX_POLICY_ENDPOINTS 65536
#define MAX_POLICY_RULES 65536
#define MAX_POLICY_PEERS 262144
#define MAX_RULES_PER_DIRECTION 64
#define RULE_PORTS 4

struct ep_policy {
	__u16 deny_rule[2]; /* the default deny's handle, per direction */
	__u16 first[2];     /* first slot in policy_rules, per direction */
	__u8 count[2];      /* slots, per direction (<= MAX_RULES_PER_DIRECTION) */
	__u8 isolated;      /* POL_ISOLATED_* */
	__u8 _pad;
};

struct port_range {
	__u8 proto;
	__u8 _pad;
	__u16 from; /* host order, inclusive */
	__u16 to;
};

struct policy_rule {
	__u16 id;
	__u8 nports; /* 0: every protocol and port */
	__u8 _pad;
	struct port_range ports[RULE_PORTS];
};

struct peer_key {
	__u32 prefixlen; /* 32 + the CIDR's prefix length */
	__u32 slot;
	__u32 addr;      /* network order */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POLICY_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct ep_policy);
} ep_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_POLICY_RULES);
	__type(key, __u32);
	__type(value, struct policy_rule);
} policy_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_POLICY_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key);
	__type(value, __u32);
} policy_peers SEC(".maps");

/*
 * Traceflow. A traced packet carries MARK_TRACE on a node and TAG_TRACE in the
 * VNI between nodes; every hook that sees it writes a trace_event. A packet an
 * agent injects also has the IPv4 reserved flag (RFC 791 bit 0, which no stack
 * sends) so the last hop on any node can drop it; from_pod trusts the flag only
 * for packets registered in trace_packets.
 */
#define IP_RF 0x8000 /* in iphdr.frag_off, host order */

/* api::trace::TracePoint codes. */
enum trace_point {
	TP_FROM_POD = 1,
	TP_POLICY_EGRESS = 2,
	TP_TO_OVERLAY = 3,
	TP_FROM_OVERLAY = 4,
	TP_POLICY_INGRESS = 5,
	TP_TO_POD = 6,
	TP_HOST_STACK = 7,
	TP_MASQUERADE = 8,
};

/* api::trace::HopAction codes. */
enum trace_action {
	TA_RECEIVED = 1,
	TA_FORWARDED = 2,
	TA_TUNNELLED = 3,
	TA_DELIVERED = 4,
	TA_DROPPED = 5,
	TA_REJECTED = 6,
	TA_MASQUERADED = 7,
};

/* A drop reason only trace events carry (the flow tag has two bits for drops). */
#define TRACE_DROP_NO_ROUTE 4

/* trace_event.flags */
#define TRACE_F_INJECTED 1u

/* One observation of a traced packet, with the headers that identify it as the
 * hook saw them (after masquerade: the translated source). */
struct trace_event {
	__u64 ts_ns;       /* bpf_ktime_get_ns() */
	__u32 saddr;       /* network order */
	__u32 daddr;
	__u16 sport;       /* network order; ICMP echo: the id */
	__u16 dport;
	__u16 ip_id;       /* network order */
	__u8 proto;
	__u8 point;        /* enum trace_point */
	__u8 action;       /* enum trace_action */
	__u8 reason;       /* enum drop_reason or TRACE_DROP_NO_ROUTE; 0 none */
	__u16 rule;        /* at policy points: the deciding rule's handle, 0 no policy */
	__u32 ifindex;
	__u32 tunnel_remote; /* the other node's underlay address, network order */
	__u32 tag;         /* VNI sent or received */
	__u32 trace_id;    /* at the source: the trace that marked the packet */
	__u32 flags;       /* TRACE_F_* */
};

/* A packet an agent is about to inject, keyed by its headers (network order). */
struct trace_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u16 ip_id;
	__u8 proto;
	__u8 _pad;
};

/* live_trace.flags */
#define LIVE_F_DROPPED_ONLY 1u

/* A live trace armed on a source pod (keyed by the pod's address): the next
 * packet that matches is marked (TCP: a SYN without ACK, a new connection). */
struct live_trace {
	__u32 daddr;   /* network order */
	__u32 dmask;   /* network order; 0 any destination */
	__u16 sport;   /* network order; 0 any */
	__u16 dport;   /* network order; 0 any */
	__u8 proto;    /* 0 any */
	__u8 flags;    /* LIVE_F_* */
	__u16 _pad;
	__u32 trace_id;
	__u32 armed;   /* 1 until a packet takes it; dropped-only traces stay armed */
};

#define TRACE_EVENTS_BYTES (256 * 1024)
#define MAX_TRACE_PACKETS 65536

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TRACE_EVENTS_BYTES);
} trace_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TRACE_PACKETS);
	__type(key, struct trace_key);
	__type(value, __u32);
} trace_packets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct live_trace);
} trace_live SEC(".maps");

#endif
