std = "max"
files["spec"] = { std = "+busted" }
max_line_length = 110
files["lua/hotreload/nvim.lua"] = { read_globals = { "vim" } }
files["lua/hotreload/love.lua"] = { globals = { "love" } }
files["examples"] = { globals = {} }
