-- wrk script for the signed-webhook benchmark (issue 5): the same 1 KiB body as
-- ../shared/bench/ceiling/post.lua, plus one signature header computed once by scripts/bench
-- (the body never changes, so neither does an HMAC over it). Env: WRK_PATH, WRK_DEDUP=1 (unique
-- X-Delivery-Id / X-GitHub-Delivery per request), WRK_SIGN_HEADER (e.g. X-Hub-Signature-256) and
-- WRK_SIGN_VALUE (e.g. sha256=<hex>), WRK_EXTRA_HEADER / WRK_EXTRA_VALUE (e.g. X-GitHub-Event: push).
local path = os.getenv("WRK_PATH") or "/hook"
local dedup = os.getenv("WRK_DEDUP") == "1"
local sign_header = os.getenv("WRK_SIGN_HEADER")
local sign_value = os.getenv("WRK_SIGN_VALUE")
local extra_header = os.getenv("WRK_EXTRA_HEADER")
local extra_value = os.getenv("WRK_EXTRA_VALUE")
local pad = string.rep("x", 1024 - #'{"event":"push","data":""}')
local body = '{"event":"push","data":"' .. pad .. '"}'
local counter = 0
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9)) .. "-"

request = function()
  local h = {["Content-Type"] = "application/json"}
  if sign_header and sign_value then h[sign_header] = sign_value end
  if extra_header and extra_value then h[extra_header] = extra_value end
  if dedup then
    counter = counter + 1
    h["X-Delivery-Id"] = prefix .. counter
    h["X-GitHub-Delivery"] = prefix .. counter
  end
  return wrk.format("POST", path, h, body)
end

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write
             + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    "WRK rps=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f requests=%d errors=%d non2xx=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000, summary.requests, errs, summary.errors.status))
end
