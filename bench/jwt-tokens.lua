-- wrk script for the jwt-rs256-nocache target (bench/lib.sh): every request carries the next
-- token of a file of distinct tokens, so the jwt plugin's verified-token cache (256 tokens per
-- instance) seldom holds it. bench/lib.sh writes a copy with the path of the token file in
-- place of the placeholder in io.lines.
local tokens = {}
for line in io.lines("@TOKENS@") do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
end

-- each wrk thread starts at a different place in the list
local threads = 0
function setup(thread)
    thread:set("start", threads * 7919)
    threads = threads + 1
end

local i
local headers = {}
function request()
    i = ((i or start or 0) % #tokens) + 1
    headers["Authorization"] = tokens[i]
    return wrk.format(nil, nil, headers)
end
