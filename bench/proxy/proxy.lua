-- wrk through an HTTP proxy: wrk connects to the proxy given as its URL and
-- sends absolute-form requests for the backend given after "--".
--   wrk -s proxy.lua http://127.0.0.1:PROXY/ -- 127.0.0.1:BACKEND
-- With no argument (a direct run), the URL's own origin-form path is kept.
function init(args)
  local target = args[1]
  if target then
    wrk.path = "http://" .. target .. "/"
    wrk.headers["Host"] = target
  end
end
