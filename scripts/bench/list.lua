-- A list page of 50, starting at different points of the 1,000 policies
-- (continue tokens are the hex of the last name), filtered by a label.
local pages = {}
local i = 0
local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", string.byte(c)) end)) end
function init(args)
  for k = 0, 19 do
    local after = string.format("bench-%04d", k * 47)
    pages[k] = "/api/v1/policies?label=team=bench&limit=50&continue=" .. hex(after)
  end
end
function request()
  i = (i + 1) % 20
  return wrk.format("GET", pages[i])
end
function response(status, headers, body)
  if status ~= 200 then print("unexpected status " .. status) end
end
