-- wrk script for the non-streaming benchmark: one realistic chat request,
-- repeated. Counts non-2xx responses per thread (wrk's own error counter only
-- sees status >= 400) and prints one machine-readable BENCH_RESULT line that
-- tests/bench/loadgen.py parses, so no wrk text output is scraped.
-- The API key is the script's first argument (`wrk ... -s post.lua URL -- KEY`),
-- so each gateway of a run can be called with its own key; without one it is
-- the bench config's master key. (wrk formats the request after init().)

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-master-key"
wrk.body = '{"model":"bench-model","messages":['
  .. '{"role":"system","content":"You are a concise assistant for backend engineers."},'
  .. '{"role":"user","content":"In two sentences, why does connection pooling help an HTTP client under load?"}'
  .. '],"temperature":0.2,"max_tokens":64,"user":"bench"}'

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  if args[1] then
    wrk.headers["Authorization"] = "Bearer " .. args[1]
  end
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non2xx":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), bad,
    e.connect, e.read, e.write, e.timeout))
end
