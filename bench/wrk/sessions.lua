-- wrk script for bench/service_load.py: posts single context points or predicts 100 targets,
-- spread uniformly at random over the session ids listed in a file (one id: a hot session).
--
--   wrk -s bench/wrk/sessions.lua URL -- MODE IDS_FILE TARGETS RUN_ID
--
-- MODE is "context" or "predict". Every context post has its own body (a random point) and its
-- own Idempotency-Key (run id, thread, counter), so none is answered from an idempotency record.
-- done() prints one line "WRK_JSON {...}" with counts and latency percentiles in microseconds.

local next_thread = 0

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  mode, run_id = args[1], args[4]
  ids = {}
  for line in io.lines(args[2]) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  math.randomseed(os.time() * 1000 + thread_id)
  counter = 0
  local targets = tonumber(args[3])
  local xs = {}
  for i = 1, targets do xs[i] = string.format("[%.5f]", -2 + 4 * (i - 1) / math.max(targets - 1, 1)) end
  predict_body = '{"x":[' .. table.concat(xs, ",") .. ']}'
  json_headers = { ["Content-Type"] = "application/json" }
end

function request()
  local id = ids[math.random(#ids)]
  if mode == "predict" then
    return wrk.format("POST", "/v1/sessions/" .. id .. "/predict", json_headers, predict_body)
  end
  counter = counter + 1
  local x = math.random() * 4 - 2
  local body = string.format('{"x":[[%.6f]],"y":[[%.6f]]}', x, math.sin(3 * x))
  local headers = {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("%s-%d-%d", run_id, thread_id, counter),
  }
  return wrk.format("POST", "/v1/sessions/" .. id .. "/context", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
