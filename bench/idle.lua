-- Figure: an idle hotreload.poll() (watching, nothing pending) against a trivial builtin
-- call, rawequal(a, a), per call, in the same process. On LuaJIT both loops run with the JIT
-- off: a compiled loop folds rawequal away entirely, while a call to a C function is not
-- compiled, so with the JIT on the ratio would measure the compiler, not the poll.
local lib = require "bench.lib"
local hotreload = require "hotreload"

return function()
  local dir = lib.scratch()
  local w = assert(hotreload.watch(dir))
  local poll, rawequal, n = hotreload.poll, rawequal, 2000000
  local a = {}
  local function empty() for _ = 1, n do end end
  local function raw() for _ = 1, n do rawequal(a, a) end end
  local function idle() for _ = 1, n do poll() end end
  if lib.jit then lib.jit.off() end
  idle() -- warm up
  local t_empty, t_raw, t_poll = lib.interleaved({ { empty }, { raw }, { idle } }, 9)
  collectgarbage()
  collectgarbage("stop")
  local before = collectgarbage("count")
  idle()
  local bytes = (collectgarbage("count") - before) * 1024 / n
  collectgarbage("restart")
  if lib.jit then lib.jit.on() end
  w:close()
  lib.remove_tree(dir)
  local per = function(t) return math.max(t - t_empty, 0) / n * 1e9 end
  return {
    { figure = "idle poll vs rawequal (per call)", value = per(t_poll), baseline = per(t_raw),
      unit = "ns", target = 3 },
    { figure = "bytes allocated per idle poll", value = bytes, unit = "B", target = 0, absolute = true },
  }
end
