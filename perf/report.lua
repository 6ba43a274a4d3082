-- wrk script used by perf/bench.py for every scenario.
--
-- Request shape comes from the environment (set by bench.py):
--   BENCH_POST_BYTES=N   send POST with an N-byte body instead of GET
--   BENCH_POST_CHUNKED=1 send that body chunked (64 KiB chunks)
--   BENCH_CONN_CLOSE=1   send "Connection: close" (wrk reconnects after each
--                        response, so every request is a new connection)
--
-- done() prints one machine-readable line with exact counts instead of wrk's
-- rounded text:
--   BENCH_RESULT {"requests":...,"bytes":...,"duration_us":...,...}
-- Latencies are in microseconds.

local post_bytes = tonumber(os.getenv("BENCH_POST_BYTES") or "0") or 0
local post_chunked = os.getenv("BENCH_POST_CHUNKED") == "1"
if post_bytes > 0 then
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/octet-stream"
   if not post_chunked then
      wrk.body = string.rep("x", post_bytes)
   end
end

if os.getenv("BENCH_CONN_CLOSE") == "1" then
   wrk.headers["Connection"] = "close"
end

-- A chunked body: wrk.format adds a Content-Length for any body it is given,
-- so it formats the head alone and the framed body is appended. This runs in
-- init, after wrk has set the Host header.
if post_bytes > 0 and post_chunked then
   local chunked_request = nil
   wrk.headers["Transfer-Encoding"] = "chunked"
   function init(args)
      local parts = {}
      local left = post_bytes
      while left > 0 do
         local n = math.min(64 * 1024, left)
         parts[#parts + 1] = string.format("%x\r\n", n) .. string.rep("x", n) .. "\r\n"
         left = left - n
      end
      parts[#parts + 1] = "0\r\n\r\n"
      chunked_request = wrk.format("POST", nil, nil, nil) .. table.concat(parts)
   end
   function request()
      return chunked_request
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   local fields = {
      { "requests", summary.requests },
      { "bytes", summary.bytes },
      { "duration_us", summary.duration },
      { "connect_errors", e.connect },
      { "read_errors", e.read },
      { "write_errors", e.write },
      { "status_errors", e.status },
      { "timeout_errors", e.timeout },
      { "lat_min_us", latency.min },
      { "lat_mean_us", latency.mean },
      { "lat_stdev_us", latency.stdev },
      { "lat_max_us", latency.max },
      { "lat_p50_us", latency:percentile(50) },
      { "lat_p90_us", latency:percentile(90) },
      { "lat_p99_us", latency:percentile(99) },
      { "lat_p999_us", latency:percentile(99.9) },
   }
   local parts = {}
   for i, kv in ipairs(fields) do
      parts[i] = string.format('"%s":%.0f', kv[1], kv[2])
   end
   io.write("BENCH_RESULT {" .. table.concat(parts, ",") .. "}\n")
end
