-- wrk script for benchmarks/webhook_ingest.py: every request is a distinct event.
--
-- Environment:
--   BENCH_SERVICE   service id in the URL
--   BENCH_SECRET    the static secret (Golioth pipeline format)
--   BENCH_PREFIX    unique per phase, so event ids never repeat across phases
--   BENCH_DEVICES   how many linked devices the events spread over
--   BENCH_RATE      total requests/s to pace at (0 = closed loop, as fast as answers come)
--   BENCH_THREADS   wrk's -t, to split the pace between threads
--   BENCH_SIGNED    a file of pre-signed Standard Webhooks requests (id \t ts \t signature \t body)
--
-- Pacing: wrk has no open-loop mode, but calls delay() before each request on a connection.
-- Each thread hands out send slots 1/rate apart; a connection that comes back late takes the
-- next free slot instead of bursting to catch up, so the offered rate is honest (and reported).

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local service = os.getenv("BENCH_SERVICE")
local secret = os.getenv("BENCH_SECRET")
local prefix = os.getenv("BENCH_PREFIX") or "bench"
local devices = tonumber(os.getenv("BENCH_DEVICES") or "1000")
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local signed_file = os.getenv("BENCH_SIGNED")
local path = "/webhooks/golioth/" .. service

local threads = {}
local next_tid = 0

function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {}
  missing_retry_after = 0
  interval = rate > 0 and (1000.0 * nthreads / rate) or 0
  next_slot = 0
  signed = nil
  if signed_file then
    signed = {}
    local i = 0
    for line in io.lines(signed_file) do
      i = i + 1
      -- threads take alternate lines so no id is sent twice
      if (i % nthreads) == (tid - 1) then
        local id, stamp, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
        table.insert(signed, { id, stamp, sig, body })
      end
    end
  end
end

function request()
  counter = counter + 1
  if signed then
    local r = signed[((counter - 1) % #signed) + 1]
    return wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["webhook-id"] = r[1],
      ["webhook-timestamp"] = r[2],
      ["webhook-signature"] = r[3],
    }, r[4])
  end
  local id = prefix .. "-" .. tid .. "-" .. counter
  local device = "bench-" .. ((counter * 7919 + tid * 104729) % devices)
  local body = '{"data":{"battery":' .. (counter % 100) .. ',"rssi":-' .. (40 + counter % 50) ..
      '},"device_id":"' .. device .. '","project_id":"bench","timestamp":{"seconds":' .. os.time() .. ',"nanos":0}}'
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Ce-Id"] = id,
    ["Ce-Source"] = device,
    ["Ce-Subject"] = "bench",
    ["Ce-Type"] = "io.golioth.data.v1/.s/",
    ["x-golioth-sync-secret"] = secret,
  }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
    missing_retry_after = missing_retry_after + 1
  end
end

if rate > 0 then
  function delay()
    local t = now_ms()
    if next_slot < t then next_slot = t end
    local wait = next_slot - t
    next_slot = next_slot + interval
    return wait
  end
end

function done(summary, latency, requests)
  local total, missing, sent = {}, 0, 0
  for _, thread in ipairs(threads) do
    sent = sent + thread:get("counter")
    for code, n in pairs(thread:get("statuses")) do
      total[code] = (total[code] or 0) + n
    end
    missing = missing + thread:get("missing_retry_after")
  end
  local parts = {}
  for code, n in pairs(total) do
    table.insert(parts, string.format('"%d":%d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"statuses":{%s},"missing_retry_after":%d,"sent":%d,"requests":%d,"duration_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    table.concat(parts, ","), missing, sent, summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.timeout))
end
