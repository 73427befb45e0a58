-- Check-ins of enrolled terminals, for wrk (bench/bench_channel.py's rate figures).
--
-- wrk -t N -c N -s bench/checkin_wrk.lua URL -- DEVICES_FILE N WHOLE
--
-- DEVICES_FILE: one "<device id> <device token>" a line. Thread i of N (one connection
-- each, so a reply is the answer to the thread's last request) checks in the devices of
-- lines i, i+N, ... round-robin, as the agent does: whole first, then only what changed
-- since the reply's state token (the payment host's latency); WHOLE = 1: whole every time.
-- done() prints one line, "RESULT <json>": requests, seconds, failures (answers not 200,
-- socket errors), the first failure's status.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local devices, tokens, states = {}, {}, {}
local k, current, whole = 0, nil, false
failures, first_failure = 0, ""

local WHOLE = '{"device_id":"%s","sent_at":"2026-12-06T08:00:00.000Z",'
   .. '"boot_id":"8d3c2f7e-6a51-4a0e-9b7b-3f1d2c4e5a60","agent_version":"0.1.0",'
   .. '"config_digest":"","interval_s":300,"summary":{"battery_pct":54,"ac_online":true,'
   .. '"link":"up","payment_latency_ms":%s,"printer":"ok","queue_depth":0,'
   .. '"queue_oldest_age_s":null,"active_faults":[],"config_digest":"sha256:6f1c0d9e2a4b7c31"},'
   .. '"results":[]}'

function init(args)
   local n = tonumber(args[2])
   whole = args[3] == "1"
   local i = 0
   for line in io.lines(args[1]) do
      local dev, tok = line:match("^(%S+) (%S+)$")
      if dev and i % n == id then
         table.insert(devices, dev)
         tokens[dev] = tok
      end
      i = i + 1
   end
end

function request()
   local dev = devices[k % #devices + 1]
   local latency = 40.0 + ((k * 7) % 13) / 2
   k = k + 1
   current = dev
   local base = (not whole) and states[dev]
   local body
   if base then
      body = string.format('{"base":"%s","summary":{"payment_latency_ms":%s}}', base, latency)
   else
      body = string.format(WHOLE, dev, latency)
   end
   return wrk.format("POST", "/v1/checkins", {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. tokens[dev],
      ["X-Posagent-Device"] = dev,
   }, body)
end

function response(status, headers, body)
   if status == 200 then
      states[current] = body:match('"state":"([^"]+)"')
   else
      states[current] = nil
      failures = failures + 1
      if first_failure == "" then
         first_failure = status .. " " .. body:sub(1, 200)
      end
   end
end

function done(summary, latency, requests)
   local failed, first = 0, ""
   for _, t in ipairs(threads) do
      failed = failed + t:get("failures")
      if first == "" then
         first = t:get("first_failure")
      end
   end
   local e = summary.errors
   failed = failed + e.connect + e.read + e.write + e.timeout
   io.write(string.format(
      'RESULT {"requests":%d,"seconds":%.6f,"failures":%d,"first_failure":"%s",'
         .. '"p50_ms":%.3f,"p99_ms":%.3f}\n',
      summary.requests, summary.duration / 1e6, failed, (first:gsub('[%c"\\]', " ")),
      latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
