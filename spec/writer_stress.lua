-- A writer process saves 20 files continuously (in place and by rename) while this host polls
-- at 60 Hz (`make stress`; HOTRELOAD_WRITER_SECONDS, default 60). At the end every file's final
-- content is live, and the only errors seen are those of half-written files (read between a
-- truncation and the write that completes it), each fixed by a later event.
local h = require "spec.helpers"
local system = require "system"
local hotreload = require "hotreload"

teardown(h.cleanup)

local seconds = tonumber(os.getenv("HOTRELOAD_WRITER_SECONDS")) or 60
local FILES = 20

local WRITER = [[
local dir, seconds, files = arg[1], tonumber(arg[2]), tonumber(arg[3])
local system = require "system"
local function save(path, text, rename)
  local target = rename and path .. ".tmp~" or path
  local f = assert(io.open(target, "wb"))
  f:write(text)
  f:close()
  if rename then assert(os.rename(target, path)) end
end
local function source(i, v) return ("return { file = %d, v = %q }\n"):format(i, v) end
local stop = system.monotime() + seconds
local n = 0
while system.monotime() < stop do
  n = n + 1
  local i = math.random(files)
  save(("%s/w%d.lua"):format(dir, i), source(i, "v" .. n), n % 3 == 0)
  if n % 7 == 0 then system.sleep(0.002) end
end
for i = 1, files do save(("%s/w%d.lua"):format(dir, i), source(i, "final"), i % 2 == 0) end
save(dir .. "/../writer.done", tostring(n), false)
]]

describe("a writer saving 20 files for a while", function()
  it("ends with every final content applied, and only half-written files failing", function()
    local dir = h.root .. "/written"
    local mods = {}
    for i = 1, FILES do
      h.write(("written/w%d.lua"):format(i), ("return { file = %d, v = 'v0' }\n"):format(i))
      mods[i] = require("written.w" .. i)
    end
    local w = assert(hotreload.watch(dir))
    local writer = h.write("writer.lua", WRITER)
    local done = h.root .. "/writer.done"
    -- `timeout` ends the writer even if this spec fails before it does
    assert.equal(0, h.sh(("timeout %d %s %s %s %s %d >/dev/null 2>&1 &"):format(
      math.ceil(seconds) + 60, h.interpreter, writer, dir, tostring(seconds), FILES)))
    local reloads, errors, half = 0, 0, 0
    local function frame()
      local n, errs = hotreload.poll()
      reloads = reloads + n
      for _, e in ipairs(errs or {}) do
        errors = errors + 1
        -- a truncated file: a syntax error in it, or an empty chunk returning nothing
        local syntax = e:find("/w%d+%.lua:%d+: ") and (e:find("expected", 1, true)
          or e:find("unfinished", 1, true) or e:find("<eof>", 1, true))
        if syntax or e:find("returns a boolean", 1, true) then
          half = half + 1
        else
          error("unexpected error: " .. e)
        end
      end
      system.sleep(1 / 60)
    end
    local deadline = system.monotime() + seconds + 30
    while not io.open(done) and system.monotime() < deadline do frame() end
    assert(io.open(done), "the writer did not finish")
    local function all_final()
      for i = 1, FILES do
        if mods[i].v ~= "final" then return false end
      end
      return true
    end
    local settle = system.monotime() + 10
    while not all_final() and system.monotime() < settle do frame() end
    w:close()
    print(("\n%d saves, %d reloads, %d half-written files seen"):format(
      tonumber(io.open(done):read("*a")), reloads, half))
    for i = 1, FILES do
      assert.equal("final", mods[i].v, "w" .. i .. " is not final")
      assert.equal(i, mods[i].file)
    end
    assert.equal(errors, half)
  end)
end)
