-- GET of one of N stored policies per request, round robin.
local n = tonumber(os.getenv("BENCH_POLICIES") or "1000")
local i = 0
function init(args) i = math.random(0, n - 1) end
function request()
  i = (i + 1) % n
  return wrk.format("GET", string.format("/api/v1/policies/bench-%04d", i))
end
function response(status, headers, body)
  if status ~= 200 then print("unexpected status " .. status) end
end
