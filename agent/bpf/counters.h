/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU packet counters: one increment, no atomics. */
#ifndef LUMEN_COUNTERS_H
#define LUMEN_COUNTERS_H

#include "maps.h"

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

#endif
