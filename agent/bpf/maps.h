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

#define MAX_ENDPOINTS 65536
#define MAX_REMOTE_CIDRS 4096

/* A pod attached to this node, keyed by its IPv4 address (network order). */
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
};

/* Indexes of the per-CPU packet counters. */
enum counter {
	CNT_FROM_POD = 0,
	CNT_LOCAL_REDIRECT = 1,
	CNT_TUNNELLED = 2,
	CNT_FROM_OVERLAY = 3,
	CNT_OVERLAY_DELIVERED = 4,
	CNT_TO_STACK = 5,
	CNT_TO_POD = 6,
	CNT_HOST_TUNNELLED = 7,
	CNT_DROP_NO_CONFIG = 8,
	CNT_DROP_TUNNEL_KEY = 9,
	CNT_MAX = 10,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint);
} endpoints SEC(".maps");

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

#endif
