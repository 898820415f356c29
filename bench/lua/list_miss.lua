-- Cold list pages: each request filters by a different author, numbers args[2] up to (not
-- including) args[3], each once, written as args[1] .. the number on 6 digits .. args[4]
-- (e.g. "/v1/books?author=List%20author%20" .. "000123" .. "&sort=-year,title&limit=20").
-- Past the end, with args[5] = "wrap", it goes on from args[6] (for a server without a
-- cache, which needs no new filter); otherwise it asks for a query the API refuses (a 400,
-- which wrk counts as non-2xx, so a run that ran out is visible, never a silent hit).
local i, first, stop, head, tail, wrap, low = 0, 0, 0, "/", "", false, 0

function init(args)
  head = args[1]
  first = tonumber(args[2])
  stop = tonumber(args[3])
  tail = args[4]
  wrap = args[5] == "wrap"
  low = tonumber(args[6] or args[2])
end

function request()
  local n = first + i
  i = i + 1
  if n >= stop then
    if not wrap or stop <= low then
      return wrk.format("GET", "/v1/books?exhausted=true")
    end
    n = low + (n - low) % (stop - low)
  end
  return wrk.format("GET", head .. string.format("%06d", n) .. tail)
end
