-- PUT (replace) of one of N stored policies per request, round robin, no If-Match.
-- Each thread builds its bodies once so the load tool spends its time sending.
n = tonumber(os.getenv("BENCH_POLICIES") or "1000")
local bodies, paths = {}, {}
local i = 0

function init(args)
  for k = 0, n - 1 do
    local name = string.format("bench-%04d", k)
    paths[k] = "/api/v1/policies/" .. name
    bodies[k] = string.format([[{"metadata":{"name":"%s","labels":{"team":"bench"}},"spec":{"host":"%s.example.com","port":8080,"zones":[{"name":"a","weight":%d,"endpoints":[{"address":"127.0.9.1","port":80}]},{"name":"b","weight":%d,"endpoints":[{"address":"127.0.9.2","port":80}]}]}}]],
      name, name, 50 + (k % 7), 50 - (k % 7))
  end
  i = math.random(0, n - 1)
end

function request()
  i = (i + 1) % n
  return wrk.format("PUT", paths[i], {["Content-Type"] = "application/json"}, bodies[i])
end

function response(status, headers, body)
  if status ~= 200 then
    print("unexpected status " .. status .. ": " .. body)
  end
end
