-- wrk script for bench/ingest: POSTs pre-generated, distinct, correctly signed Segment bodies.
-- BENCH_BODIES names a file of "signature<TAB>body" lines. Thread k of n sends lines k, k+n, k+2n...
-- so no two requests of one run carry the same messageId (dedupe never short-circuits).
local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

local sigs, bodies = {}, {}
local counter, stride = 0, 1

function init(args)
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    local tab = line:find("\t", 1, true)
    sigs[#sigs + 1] = line:sub(1, tab - 1)
    bodies[#bodies + 1] = line:sub(tab + 1)
  end
  counter = tid
  stride = tonumber(os.getenv("BENCH_THREADS"))
end

function request()
  local i = counter % #bodies + 1
  counter = counter + stride
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["X-Signature"] = sigs[i]}, bodies[i])
end
