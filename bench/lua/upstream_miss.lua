-- Cold reads of the "any upstream" scenarios: each request asks for a URL never asked before,
-- args[1] followed by a counter. The caller makes args[1] new for every run (wrk -t1: one
-- thread, one counter), so no cache under test can have the answer.
local prefix, i = "/", 0

function init(args)
  prefix = args[1]
end

function request()
  i = i + 1
  return wrk.format("GET", prefix .. i)
end
