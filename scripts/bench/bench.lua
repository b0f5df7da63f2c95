-- wrk script for every target:  wrk -t C -c C ... -s bench.lua URL -- MODE TOKEN_DIR ROLE
--
-- MODE exchange: POST /v1/token, RFC 8693 form (Ephemera, baseline); one exchange per request.
-- MODE login:    POST /v1/auth/jwt/login {"role","jwt"} (OpenBao); one exchange per request.
-- MODE chain:    the login, then GET /v1/identity/oidc/token/ROLE with the batch token
--                (OpenBao); one exchange per completed chain of two requests.
--
-- Thread i reads its own slice of unique assertions from TOKEN_DIR/i (one per line) and never
-- presents one twice: when its slice is spent it stops (and says so), it never wraps around.
-- With one connection per thread (-t C -c C) a thread's state is its connection's state.
-- done() prints one line `BENCH_JSON {...}` with the counters summed over threads, and how long
-- the last thread to run out had run (wrk itself runs on until -d even when every thread stopped).

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local FORM = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
   .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"

local mode, role, tokens
local pos = 0
local vault_token = nil  -- chain: the batch token between the two steps
local json_headers = { ["Content-Type"] = "application/json" }
local form_headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

local function uptime()
   local f = io.open("/proc/uptime")
   local t = f:read("*n")
   f:close()
   return t
end

local function stop()
   ran_out = 1
   active_s = uptime() - started
   wrk.thread:stop()
end

function init(args)
   mode, role = args[1], args[3]
   tokens = {}
   for line in io.lines(args[2] .. "/" .. id) do
      tokens[#tokens + 1] = line
   end
   ok, bad, used, ran_out, active_s, statuses = 0, 0, 0, 0, 0, ""
   counts = {}
   started = uptime()
end

local function next_token()
   if pos >= #tokens then
      return nil
   end
   pos = pos + 1
   used = pos
   return tokens[pos]
end

function request()
   if mode == "chain" and vault_token then
      return wrk.format("GET", "/v1/identity/oidc/token/" .. role, { ["X-Vault-Token"] = vault_token })
   end
   local token = next_token()
   if not token then
      -- Only reached if the stop below did not take effect in time: a request that spends nothing.
      stop()
      return wrk.format("GET", "/ran-out")
   end
   if mode == "exchange" then
      return wrk.format("POST", "/v1/token", form_headers,
                        FORM .. "&audience=" .. role .. "&subject_token=" .. token)
   end
   return wrk.format("POST", "/v1/auth/jwt/login", json_headers,
                     '{"role":"' .. role .. '","jwt":"' .. token .. '"}')
end

local function count(status)
   local key = tostring(status)
   counts[key] = (counts[key] or 0) + 1
   local parts = {}
   for k, v in pairs(counts) do
      parts[#parts + 1] = '"' .. k .. '":' .. v
   end
   statuses = table.concat(parts, ",")
end

function response(status, headers, body)
   if ran_out == 1 then
      return
   end
   if status < 200 or status > 299 then
      bad = bad + 1
      count(status)
      vault_token = nil
   elseif mode == "chain" and not vault_token then
      vault_token = body:match('"client_token":"([^"]+)"')
      if not vault_token then
         bad = bad + 1
         count("no_client_token")
      end
      return
   else
      ok = ok + 1
      vault_token = nil
   end
   if pos >= #tokens then
      stop()
   end
end

function done(summary, latency, requests)
   local t = { ok = 0, bad = 0, used = 0, ran_out = 0 }
   local statuses = {}
   local ran_out_after, max_used = 0, 0
   for _, thread in ipairs(threads) do
      ran_out_after = math.max(ran_out_after, thread:get("active_s"))
      max_used = math.max(max_used, thread:get("used"))
      for k, _ in pairs(t) do
         t[k] = t[k] + thread:get(k)
      end
      statuses[#statuses + 1] = "{" .. thread:get("statuses") .. "}"
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"ok":%d,"bad":%d,"used":%d,"max_used":%d,"ran_out_threads":%d,"ran_out_after_s":%.2f,"statuses":[%s],'
         .. '"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,'
         .. '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,'
         .. '"mean_us":%.1f,"max_us":%d}\n',
      t.ok, t.bad, t.used, max_used, t.ran_out, ran_out_after, table.concat(statuses, ","),
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
      latency.mean, latency.max))
end
