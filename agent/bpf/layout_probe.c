// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Host program run by build.rs: prints the layout of maps.h as Rust constants. */
#include <stddef.h>
#include <stdio.h>
#include "maps.h"

#define FIELD(s, f) \
	printf("(\"%s.%s\", %zu, %zu),\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))
#define SIZE(s) printf("(\"%s\", %zu),\n", #s, sizeof(struct s))

int main(void)
{
	printf("/// (struct.field, offset, size) as the C compiler lays out maps.h.\n");
	printf("pub const C_FIELDS: &[(&str, usize, usize)] = &[\n");
	FIELD(endpoint, ifindex);
	FIELD(endpoint, identity);
	FIELD(endpoint, mac);
	FIELD(endpoint, host_mac);
	FIELD(endpoint, flags);
	FIELD(lpm_v4_key, prefixlen);
	FIELD(lpm_v4_key, addr);
	FIELD(remote_node, node_ip);
	FIELD(remote_node, flags);
	FIELD(dp_config, vxlan_ifindex);
	FIELD(dp_config, node_ip);
	FIELD(dp_config, cluster_addr);
	FIELD(dp_config, cluster_mask);
	FIELD(dp_config, flags);
	FIELD(dp_config, events_per_sec);
	FIELD(dp_config, policy_epoch);
	FIELD(flow_key, addr);
	FIELD(flow_key, port);
	FIELD(flow_key, proto);
	FIELD(flow_value, last_ns);
	FIELD(flow_value, first_us);
	FIELD(flow_value, first_seq);
	FIELD(flow_value, bytes);
	FIELD(flow_value, packets);
	FIELD(flow_value, side);
	FIELD(flow_value, tag);
	FIELD(flow_value, rule);
	FIELD(flow_event, key);
	FIELD(flow_event, value);
	FIELD(flow_event, kind);
	FIELD(flow_event, ifindex);
	FIELD(ep_policy, deny_rule);
	FIELD(ep_policy, first);
	FIELD(ep_policy, count);
	FIELD(ep_policy, isolated);
	FIELD(port_range, proto);
	FIELD(port_range, from);
	FIELD(port_range, to);
	FIELD(policy_rule, id);
	FIELD(policy_rule, nports);
	FIELD(policy_rule, ports);
	FIELD(peer_key, prefixlen);
	FIELD(peer_key, slot);
	FIELD(peer_key, addr);
	FIELD(traffic, packets);
	FIELD(traffic, bytes);
	printf("];\n");
	printf("/// (struct, size) as the C compiler lays out maps.h.\n");
	printf("pub const C_SIZES: &[(&str, usize)] = &[\n");
	SIZE(endpoint);
	SIZE(lpm_v4_key);
	SIZE(remote_node);
	SIZE(dp_config);
	SIZE(flow_key);
	SIZE(flow_value);
	SIZE(flow_event);
	SIZE(traffic);
	SIZE(ep_policy);
	SIZE(port_range);
	SIZE(policy_rule);
	SIZE(peer_key);
	printf("];\n");
	printf("/// Constants shared with the datapath.\n");
	printf("pub const C_CONSTS: &[(&str, u64)] = &[\n");
	printf("(\"TAG_TRACE\", %u),\n", TAG_TRACE);
	printf("(\"CNT_MAX\", %u),\n", CNT_MAX);
	printf("(\"MAX_ENDPOINTS\", %u),\n", MAX_ENDPOINTS);
	printf("(\"MAX_REMOTE_CIDRS\", %u),\n", MAX_REMOTE_CIDRS);
	printf("(\"IDENTITY_POD_BASE\", %u),\n", IDENTITY_POD_BASE);
	printf("(\"DROP_POLICY\", %u),\n", DROP_POLICY);
	printf("(\"DROP_TUNNEL_KEY\", %u),\n", DROP_TUNNEL_KEY);
	printf("(\"DROP_NO_CONFIG\", %u),\n", DROP_NO_CONFIG);
	printf("(\"DROP_MAX\", %u),\n", DROP_MAX);
	printf("(\"DIR_MAX\", %u),\n", DIR_MAX);
	printf("(\"EVENT_END\", %u),\n", EVENT_END);
	printf("(\"EVENT_DROP\", %u),\n", EVENT_DROP);
	printf("(\"FLOW_F_SIDE1_FIRST\", %u),\n", FLOW_F_SIDE1_FIRST);
	printf("(\"SIDE_FLAGS_SHIFT\", %u),\n", SIDE_FLAGS_SHIFT);
	printf("(\"TAG_DROP_SHIFT\", %u),\n", TAG_DROP_SHIFT);
	printf("(\"FLOW_F_TRACED\", %u),\n", FLOW_F_TRACED);
	printf("(\"FLOW_F_OVERLAY\", %u),\n", FLOW_F_OVERLAY);
	printf("(\"CFG_NO_FLOWS\", %u),\n", CFG_NO_FLOWS);
	printf("(\"CFG_POLICY\", %u),\n", CFG_POLICY);
	printf("(\"FLOW_EPOCH_SHIFT\", %u),\n", FLOW_EPOCH_SHIFT);
	printf("(\"FLOW_F_DENIED\", %u),\n", FLOW_F_DENIED);
	printf("(\"POL_ISOLATED_INGRESS\", %u),\n", POL_ISOLATED_INGRESS);
	printf("(\"POL_ISOLATED_EGRESS\", %u),\n", POL_ISOLATED_EGRESS);
	printf("(\"MAX_RULES_PER_DIRECTION\", %u),\n", MAX_RULES_PER_DIRECTION);
	printf("(\"RULE_PORTS\", %u),\n", RULE_PORTS);
	printf("(\"MAX_POLICY_RULES\", %u),\n", MAX_POLICY_RULES);
	printf("];\n");
	return 0;
}
