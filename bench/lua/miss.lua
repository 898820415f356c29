-- Cold reads: each request asks for a different item, from line args[2] + 1 of the file
-- args[1] on, each id once; past the end it asks for "exhausted" (a 404, which wrk
-- counts as non-2xx, so a run that ran out of cold ids is visible, never a silent hit).
local ids, i, prefix = {}, 0, "/"

function init(args)
  local start = tonumber(args[2])
  prefix = args[3]
  local n = 0
  for line in io.lines(args[1]) do
    n = n + 1
    if n > start then ids[#ids + 1] = line end
  end
end

function request()
  i = i + 1
  return wrk.format("GET", prefix .. (ids[i] or "exhausted"))
end
