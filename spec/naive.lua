-- The seed document's reload_module, as a stand-in for hotreload when the specs run with
-- HOTRELOAD_SPEC_NAIVE=1: `make check-specs` uses it to show that the rule specs fail
-- without the rules.
local real = require "hotreload"

local function reload_module(module_name)
  local old_module = package.loaded[module_name] or {}
  package.loaded[module_name] = nil
  require(module_name)
  local new_module = package.loaded[module_name]
  for k, v in pairs(new_module) do
    old_module[k] = v
  end
  package.loaded[module_name] = old_module
  return old_module
end

return setmetatable({
  reload_module = reload_module, -- as the seed wrote it (bench/reload.lua times it)
  reload = function(name)
    if type(name) ~= "string" then error("bad argument #1 to 'reload'") end
    local ok, m = pcall(reload_module, name)
    if ok then return m end
    return nil, tostring(m)
  end,
}, { __index = real })
