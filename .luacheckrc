std = "max"
files["spec"] = { std = "+busted" }
max_line_length = 110
files["lua/hotreload/nvim.lua"] = { std = "luajit", read_globals = { "vim" } }
files["lua/hotreload/love.lua"] = { std = "luajit", globals = { "love" } }
files["examples"] = { globals = {} }
