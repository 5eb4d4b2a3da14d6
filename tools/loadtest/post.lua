-- wrk script of `cargo xtask loadtest`: POSTs the image named by $LOADTEST_IMAGE to
-- $LOADTEST_PATH (default /v1/detect) and prints one JSON line at the end: requests,
-- duration, latency percentiles (ms), the count of answers by status, socket errors.
local f = assert(io.open(os.getenv("LOADTEST_IMAGE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.path = os.getenv("LOADTEST_PATH") or "/v1/detect"
wrk.headers["Content-Type"] = os.getenv("LOADTEST_CONTENT_TYPE") or "image/jpeg"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do
      all[code] = (all[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(all) do
    table.insert(parts, string.format('"%d":%d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_s":%.3f,"p50_ms":%.2f,"p95_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,' ..
    '"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}}\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout, e.status))
end
