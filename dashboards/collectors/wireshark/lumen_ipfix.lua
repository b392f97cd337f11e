-- lumen_ipfix.lua: names the enterprise information elements of Lumen's IPFIX
-- export in Wireshark and tshark.
--
-- Wireshark 4.0's IPFIX dissector (cflow) has no table of user-defined
-- elements: it shows Antrea's (PEN 56506) and Lumen's elements as
-- "Enterprise Private entry" hex bytes. This post-dissector re-reads every IPFIX
-- message cflow found, keeps the templates it sees, and adds a "Lumen IPFIX"
-- tree with one named, typed field per element, e.g.
--
--   tshark -X lua_script:lumen_ipfix.lua -d udp.port==4739,cflow \
--          -Y 'lumen_ipfix.sourcePodNamespace == "shop"' \
--          -T fields -e lumen_ipfix.sourcePodName -e lumen_ipfix.lumenVerdict
--
-- Install for Wireshark: copy it into ~/.local/lib/wireshark/plugins/.
-- Lumen's enterprise number is a preference (Lumen's IpfixConfig
-- enterprise_number, 32473 by default):
--   -o lumen_ipfix.enterprise:NUMBER
--
-- Like cflow, it decodes data only after it has seen the template: start a
-- capture before the agent (re)connects, or wait for the next template refresh.

local proto = Proto("lumen_ipfix", "Lumen IPFIX enterprise elements")

local ANTREA_PEN = 56506
local DEFAULT_LUMEN_PEN = 32473

local POLICY_TYPES = {
    [1] = "K8sNetworkPolicy",
    [2] = "AntreaNetworkPolicy",
    [3] = "AntreaClusterNetworkPolicy",
    [4] = "K8sClusterNetworkPolicy",
}
local RULE_ACTIONS = { [0] = "NoAction", [1] = "Allow", [2] = "Drop", [3] = "Reject" }
local FLOW_TYPES = { [1] = "IntraNode", [2] = "InterNode", [3] = "ToExternal", [4] = "FromExternal" }
local VERDICTS = { [1] = "FORWARDED", [2] = "DROPPED" }
local DROP_REASONS = {
    [0] = "none",
    [1] = "POLICY",
    [2] = "TUNNEL_KEY",
    [3] = "NO_CONFIG",
    [255] = "UNKNOWN",
}

-- id, name, type ("string", "u8", "u32", "u64"), value names, description.
local ANTREA = {
    { 100, "sourcePodNamespace", "string", nil, "Namespace of the source Pod" },
    { 101, "sourcePodName", "string", nil, "Name of the source Pod" },
    { 102, "destinationPodNamespace", "string", nil, "Namespace of the destination Pod" },
    { 103, "destinationPodName", "string", nil, "Name of the destination Pod" },
    { 104, "sourceNodeName", "string", nil, "Node of the source Pod" },
    { 105, "destinationNodeName", "string", nil, "Node of the destination Pod" },
    { 110, "ingressNetworkPolicyName", "string", nil, "Ingress policy name" },
    { 111, "ingressNetworkPolicyNamespace", "string", nil, "Ingress policy namespace" },
    { 112, "egressNetworkPolicyName", "string", nil, "Egress policy name" },
    { 113, "egressNetworkPolicyNamespace", "string", nil, "Egress policy namespace" },
    { 115, "ingressNetworkPolicyType", "u8", POLICY_TYPES, "Ingress policy type" },
    { 118, "egressNetworkPolicyType", "u8", POLICY_TYPES, "Egress policy type" },
    { 137, "flowType", "u8", FLOW_TYPES, "Flow type" },
    { 139, "ingressNetworkPolicyRuleAction", "u8", RULE_ACTIONS, "Ingress rule action" },
    { 140, "egressNetworkPolicyRuleAction", "u8", RULE_ACTIONS, "Egress rule action" },
    { 141, "ingressNetworkPolicyRuleName", "string", nil, "Ingress rule name" },
    { 142, "egressNetworkPolicyRuleName", "string", nil, "Egress rule name" },
    { 143, "sourcePodLabels", "string", nil, "Source Pod labels (JSON)" },
    { 144, "destinationPodLabels", "string", nil, "Destination Pod labels (JSON)" },
}

local LUMEN = {
    { 1, "lumenVerdict", "u8", VERDICTS, "Verdict on the observing node" },
    { 2, "lumenDropReason", "u8", DROP_REASONS, "Drop reason" },
    { 3, "lumenTag", "u32", nil, "VXLAN flow tag (VNI)" },
    { 4, "lumenCorrelationId", "u64", nil, "Correlation id (equal on every node)" },
    { 5, "lumenCommunityId", "string", nil, "Community ID v1" },
    { 6, "lumenSourceIdentity", "u32", nil, "Source identity" },
    { 7, "lumenDestinationIdentity", "u32", nil, "Destination identity" },
    { 8, "lumenTraced", "u8", nil, "Traced (1) or not (0)" },
    { 9, "lumenObservationNode", "string", nil, "Observing node" },
}

local function make_field(def)
    local _, name, kind, names, desc = table.unpack(def)
    local abbrev = "lumen_ipfix." .. name
    if kind == "string" then
        return ProtoField.string(abbrev, name, base.UNICODE, desc)
    elseif kind == "u8" then
        return ProtoField.uint8(abbrev, name, base.DEC, names, nil, desc)
    elseif kind == "u32" then
        return ProtoField.uint32(abbrev, name, base.DEC, names, nil, desc)
    end
    return ProtoField.uint64(abbrev, name, base.DEC, names, nil, desc)
end

-- [pen][id] = { field, kind }. Lumen's elements are looked up by the preference's
-- current value at each record, so changing it takes effect on the next dissection.
local by_pen = { [ANTREA_PEN] = {} }
local lumen_by_id = {}
local fields = {}
for _, def in ipairs(ANTREA) do
    local f = make_field(def)
    by_pen[ANTREA_PEN][def[1]] = { field = f, kind = def[3] }
    table.insert(fields, f)
end
for _, def in ipairs(LUMEN) do
    local f = make_field(def)
    lumen_by_id[def[1]] = { field = f, kind = def[3] }
    table.insert(fields, f)
end
local f_record = ProtoField.none("lumen_ipfix.record", "Flow record")
local f_template = ProtoField.uint16("lumen_ipfix.template_id", "Template ID", base.DEC)
table.insert(fields, f_record)
table.insert(fields, f_template)
proto.fields = fields

proto.prefs.enterprise = Pref.uint("Lumen enterprise number", DEFAULT_LUMEN_PEN,
    "Private Enterprise Number of Lumen's own elements (IpfixConfig enterprise_number)")

local function lumen_pen()
    return proto.prefs.enterprise
end

-- Templates by exporter address, port, observation domain and template id.
local templates = {}

function proto.init()
    templates = {}
end

local cflow_version = Field.new("cflow.version")

local VARIABLE = 65535

-- Template and options template records of one set: a list of
-- { id, pen, len } per template id.
local function read_templates(tvb, off, set_end, options, key)
    while off + 4 <= set_end do
        local tid = tvb(off, 2):uint()
        local count = tvb(off + 2, 2):uint()
        off = off + 4
        if options then
            off = off + 2 -- scope field count: scopes are fields like any other here
        end
        if tid < 256 then
            return
        end
        local list = {}
        for _ = 1, count do
            if off + 4 > set_end then
                return
            end
            local raw = tvb(off, 2):uint()
            local len = tvb(off + 2, 2):uint()
            off = off + 4
            local pen = 0
            if raw >= 0x8000 then
                if off + 4 > set_end then
                    return
                end
                pen = tvb(off, 4):uint()
                off = off + 4
            end
            table.insert(list, { id = raw % 0x8000, pen = pen, len = len })
        end
        templates[key .. tid] = list
    end
end

local function add_value(tree, tvb, def, off, len)
    local range = tvb(off, len)
    if def.kind == "string" then
        tree:add(def.field, range)
    elseif def.kind == "u64" then
        tree:add(def.field, range, range:uint64())
    elseif len <= 4 then
        tree:add(def.field, range, range:uint())
    end
end

-- Records of one data set, numbered on from `records` (the message's count so
-- far); returns the new count.
local function read_data(tvb, off, set_end, list, tree, tid, records)
    while off < set_end do
        local start = off
        local found = {}
        for _, f in ipairs(list) do
            local len = f.len
            if len == VARIABLE then
                if off + 1 > set_end then
                    return records
                end
                len = tvb(off, 1):uint()
                off = off + 1
                if len == 255 then
                    if off + 2 > set_end then
                        return records
                    end
                    len = tvb(off, 2):uint()
                    off = off + 2
                end
            end
            if off + len > set_end then
                -- Only padding is left.
                return records
            end
            local defs = by_pen[f.pen]
            if f.pen == lumen_pen() then
                defs = lumen_by_id
            end
            local def = defs and defs[f.id]
            if def then
                table.insert(found, { def = def, off = off, len = len })
            end
            off = off + len
        end
        if off == start then
            return records
        end
        if #found > 0 then
            records = records + 1
            local rec = tree:add(f_record, tvb(start, off - start))
            rec:set_text("Flow " .. records)
            rec:add(f_template, tid)
            for _, v in ipairs(found) do
                add_value(rec, tvb, v.def, v.off, v.len)
            end
        end
    end
    return records
end

function proto.dissector(_, pinfo, tree)
    local versions = { cflow_version() }
    local subtree = nil
    for _, fi in ipairs(versions) do
        local tvb = fi.source
        local msg = fi.offset
        if fi.value == 10 and tvb and msg + 16 <= tvb:len() then
            local msg_len = tvb(msg + 2, 2):uint()
            local odid = tvb(msg + 12, 4):uint()
            local msg_end = math.min(msg + msg_len, tvb:len())
            local key = tostring(pinfo.src) .. ":" .. pinfo.src_port .. "/" .. odid .. "/"
            local off = msg + 16
            local records = 0
            while off + 4 <= msg_end do
                local set_id = tvb(off, 2):uint()
                local set_len = tvb(off + 2, 2):uint()
                if set_len < 4 then
                    break
                end
                local set_end = math.min(off + set_len, msg_end)
                if set_id == 2 or set_id == 3 then
                    read_templates(tvb, off + 4, set_end, set_id == 3, key)
                elseif set_id >= 256 then
                    local list = templates[key .. set_id]
                    if list then
                        subtree = subtree or tree:add(proto, tvb(msg, msg_end - msg))
                        records = read_data(tvb, off + 4, set_end, list, subtree, set_id, records)
                    end
                end
                off = off + set_len
            end
        end
    end
end

register_postdissector(proto)
