-- wrk script for bench/service_load.py: posts single context points or predicts 100 targets,
-- spread uniformly at random over the session ids listed in a file (one id: a hot session).
--
--   wrk -s bench/wrk/sessions.lua URL -- MODE IDS_FILE TARGETS RUN_ID
--
-- MODE is "context" or "predict" (regression sessions), "events" or "forecast" (event sessions).
-- Every post has its own body (a random point; one event at the current second, a random mark of
-- 3) and its own Idempotency-Key (run id, thread, counter), so none is answered from an
-- idempotency record. Event times are whole seconds: equal times are allowed, so posts from many
-- connections stay in order except when two posts to one session race across a second boundary:
-- the later-built one may arrive first and the other gets 409. Those are counted as "conflicts".
-- done() prints one line "WRK_JSON {...}" with counts and latency percentiles in microseconds.

local next_thread = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
  threads[#threads + 1] = thread
end

function init(args)
  mode, run_id = args[1], args[4]
  ids = {}
  for line in io.lines(args[2]) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  math.randomseed(os.time() * 1000 + thread_id)
  counter = 0
  conflicts = 0
  local targets = tonumber(args[3])
  local xs = {}
  for i = 1, targets do xs[i] = string.format("[%.5f]", -2 + 4 * (i - 1) / math.max(targets - 1, 1)) end
  predict_body = '{"x":[' .. table.concat(xs, ",") .. ']}'
  forecast_body = '{"quantiles":[0.05,0.5,0.95]}'
  json_headers = { ["Content-Type"] = "application/json" }
end

function request()
  local id = ids[math.random(#ids)]
  if mode == "predict" then
    return wrk.format("POST", "/v1/sessions/" .. id .. "/predict", json_headers, predict_body)
  end
  if mode == "forecast" then
    return wrk.format("POST", "/v1/sessions/" .. id .. "/forecast", json_headers, forecast_body)
  end
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("%s-%d-%d", run_id, thread_id, counter),
  }
  if mode == "events" then
    local body = string.format('{"times":[%d],"marks":[%d]}', os.time(), math.random(0, 2))
    return wrk.format("POST", "/v1/sessions/" .. id .. "/events", headers, body)
  end
  local x = math.random() * 4 - 2
  local body = string.format('{"x":[[%.6f]],"y":[[%.6f]]}', x, math.sin(3 * x))
  return wrk.format("POST", "/v1/sessions/" .. id .. "/context", headers, body)
end

function response(status, headers, body)
  if status == 409 then conflicts = conflicts + 1 end
end

function done(summary, latency, requests)
  local e = summary.errors
  local total_conflicts = 0
  for _, thread in ipairs(threads) do total_conflicts = total_conflicts + thread:get("conflicts") end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"conflicts":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, total_conflicts, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
