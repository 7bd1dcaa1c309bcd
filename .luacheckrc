std = "max"
files["spec"] = { std = "+busted" }
max_line_length = 110
files["lua/hotreload/nvim.lua"] = { std = "luajit", read_globals = { "vim" } }
files["lua/hotreload/love.lua"] = { std = "luajit", globals = { "love" } }
files["examples"] = { globals = {} }
files["lua/hotreload/nginx.lua"] = { std = "luajit", read_globals = { "ngx" } }
files["lua/hotreload/haproxy.lua"] = { std = "lua53", read_globals = { "core" } }
