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
	printf("];\n");
	printf("/// (struct, size) as the C compiler lays out maps.h.\n");
	printf("pub const C_SIZES: &[(&str, usize)] = &[\n");
	SIZE(endpoint);
	SIZE(lpm_v4_key);
	SIZE(remote_node);
	SIZE(dp_config);
	printf("];\n");
	printf("/// Constants shared with the datapath.\n");
	printf("pub const C_CONSTS: &[(&str, u64)] = &[\n");
	printf("(\"TAG_TRACE\", %u),\n", TAG_TRACE);
	printf("(\"CNT_MAX\", %u),\n", CNT_MAX);
	printf("(\"MAX_ENDPOINTS\", %u),\n", MAX_ENDPOINTS);
	printf("];\n");
	return 0;
}
