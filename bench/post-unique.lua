-- wrk script: POST the JSON body in $BODY_FILE like post.lua, with its "@N@" replaced in each
-- request by a number no other request of the run carries ($BENCH_NONCE, the thread, a counter),
-- so that no two requests are the same (a cache sees only misses).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "bench-key")
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local template = file:read("*a")
file:close()
local nonce = os.getenv("BENCH_NONCE") or "0"

local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local counter = 0
request = function()
  counter = counter + 1
  local body = template:gsub("@N@", nonce .. "-" .. thread_id .. "-" .. counter, 1)
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
