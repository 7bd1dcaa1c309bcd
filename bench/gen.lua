-- Generators of the benchmark workloads: a module of `n` functions (each with its own
-- upvalues, in nested tables, next to a 2000-entry data table) and a heap of live tables.
local lib = require "bench.lib"

local gen = {}

--- Source of a module of `n` functions; `tag` changes every function's body.
function gen.module(n, tag, data)
  local out = { "local M = { data = {}, groups = {} }" }
  for i = 1, data or 2000 do
    out[#out + 1] = ("M.data.k%d = { id = %d, name = 'item%d', w = %d.5 }"):format(i, i, i, i)
  end
  for i = 1, n do
    local g = i % 50
    out[#out + 1] = ("M.groups.g%d = M.groups.g%d or {}"):format(g, g)
    out[#out + 1] = ("do local count, cache, step = 0, {}, %d\n"
      .. "  function M.groups.g%d.f%d(x) count = count + step; cache[x] = %q return count end\n"
      .. "end"):format(i % 7, g, i, tag)
  end
  out[#out + 1] = "return M"
  return table.concat(out, "\n")
end

--- New versions of generated modules, for timed runs. `edit(path, n)` writes a module of `n`
--- functions (and `data` data entries) whose every function body differs from every earlier
--- version's; `fresh(path, n)` is the preparation step `lib.interleaved` runs before an
--- operation: edit, then a full collection; `load_run(path, n)` is the baseline operation,
--- `loadfile` + run of a fresh version.
function gen.versions(tag, data)
  local version = 0
  local v = {}
  function v.edit(path, n)
    version = version + 1
    lib.write(path, gen.module(n, tag .. version, data))
  end
  function v.fresh(path, n)
    return function()
      v.edit(path, n)
      lib.collect()
    end
  end
  function v.load_run(path, n)
    return { function() assert(loadfile(path))() end, v.fresh(path, n) }
  end
  return v
end

--- A heap of about `tables` live tables: entries of { i, tostring(i), { x = i } } (two tables
--- and a string each).
function gen.heap(tables)
  local heap = {}
  for i = 1, math.floor(tables / 2) do heap[i] = { i, tostring(i), { x = i } } end
  return heap
end

return gen
