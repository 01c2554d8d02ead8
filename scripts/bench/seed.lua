-- Creates bench-0000 .. bench-0999: one PUT each (round robin from a random
-- start covers every name once), then stops.
dofile("scripts/bench/put.lua")
local put_init, put_request = init, request
local sent = 0
function init(args) put_init(args) end
function request()
  sent = sent + 1
  if sent > n then wrk.thread:stop() end
  return put_request()
end
function response(status, headers, body)
  if status ~= 201 and status ~= 200 then print("seed: status " .. status .. ": " .. body) end
end
