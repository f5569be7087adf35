-- POST one SDP offer over and over, then print a one-line JSON summary.
--   wrk -s wrk_post_sdp.lua URL -- BODY [AUTHORIZATION]
-- The summary line starts with WRK_JSON so the harness can find it among
-- wrk's own output. Latencies are in microseconds; status_errors counts
-- answers with a status of 400 or more.

-- Called by wrk.init, which then builds the request once per thread.
function init(args)
   wrk.method = "POST"
   wrk.body = args[1] or "{}"
   wrk.headers["Content-Type"] = "application/sdp"
   if args[2] then
      wrk.headers["Authorization"] = args[2]
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
      '"status_errors":%d,"timeouts":%d}\n',
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
