-- Read-heavy mix: GETs of random items of a hot set (file args[1]), and args[3] percent PUTs
-- of one of them (a new title and year), which invalidate its cache entry.
local ids, prefix, write_pct, put_headers = {}, "/", 5, {}

function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  prefix = args[2]
  write_pct = tonumber(args[3])
  for name, value in pairs(wrk.headers) do put_headers[name] = value end
  put_headers["Content-Type"] = "application/json"
  math.randomseed(6)
end

function request()
  local id = ids[math.random(#ids)]
  if math.random(100) <= write_pct then
    local body = string.format('{"title":"Book %s rev %d","author":"Bench","year":%d}', id, math.random(1000000), math.random(1900, 2020))
    return wrk.format("PUT", prefix .. id, put_headers, body)
  end
  return wrk.format("GET", prefix .. id)
end
