-- A live program in the terminal: a frame loop draws a moving sprite and a score, while
-- hotreload.watch + hotreload.poll apply edits of its game script.
--
--   make demo                 scripted: edits its copy of the script, breaks it, fixes it,
--                             checks the score never reset, and exits (about 10 s)
--   make demo ARGS=--live     runs until Ctrl-C: edit the printed file in your editor
--   make demo-luajit          the same under LuaJIT
--
-- Needs package.cpath to find hotreload.so (the Makefile sets it) and luasystem (installed
-- with busted) for sleeping. HOTRELOAD_DEMO_STEP sets the seconds between scripted edits.
local hotreload = require "hotreload"
local system = require "system"

local live = arg[1] == "--live"
local step = tonumber(os.getenv("HOTRELOAD_DEMO_STEP")) or 2
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- the game script lives in a scratch directory: the demo edits its copy, never the original
local dir = os.tmpname()
os.remove(dir)
local made = os.execute("mkdir -p " .. dir)
assert(made == true or made == 0, "cannot make " .. dir)
local script = dir .. "/demo_game.lua"
local original = read(here .. "/game.lua")
write(script, original)
package.path = dir .. "/?.lua;" .. package.path

local game = require "demo_game"
local watcher = assert(hotreload.watch(dir))

-- what the scripted session does, and when (seconds from the start)
local edits = {
  { at = 1 * step, say = "edit: colour, speed and message",
    text = original:gsub('"green"', '"magenta"'):gsub("M.speed = 1", "M.speed = 2")
      :gsub('"version 1"', '"version 2: faster, new colour"') },
  { at = 2 * step, say = "edit: a syntax error (the old code keeps running)",
    text = original:gsub("M.speed = 1", "M.speed = = 3") },
  { at = 3 * step, say = "edit: fixed",
    text = original:gsub('"green"', '"cyan"'):gsub("M.speed = 1", "M.speed = 3")
      :gsub('"version 1"', '"version 3: fixed"') },
}
local finish_at = 4 * step

local function say(text)
  io.write("\r\27[K", text, "\n")
end

if live then
  say(("hotreload demo (%s): edit %s and save; Ctrl-C to stop"):format(hotreload.flavor, script))
else
  say(("hotreload demo (%s): a scripted session of %g s"):format(hotreload.flavor, finish_at))
end

local start = system.monotime()
local frames, reloads, errors_shown = 0, 0, 0
local next_edit = 1

local function frame()
  local now = system.monotime() - start
  local edit = edits[next_edit]
  if not live and edit and now >= edit.at then
    write(script, edit.text)
    say("demo: " .. edit.say)
    next_edit = next_edit + 1
  end
  local n, errors = hotreload.poll()
  if n > 0 then
    reloads = reloads + n
    say(("demo: reloaded; the score goes on from %d"):format(game.score()))
  end
  for _, e in ipairs(errors or {}) do
    errors_shown = errors_shown + 1
    say("demo: " .. e)
  end
  -- an edit that breaks at run time (not at load) shows its error; the loop goes on
  local ok, line = pcall(function()
    game.update()
    return game.draw()
  end)
  if not ok then
    errors_shown = errors_shown + 1
    line = "demo: the game raised: " .. tostring(line)
  end
  frames = frames + 1
  io.write("\r\27[K", line)
  io.flush()
  system.sleep(0.05)
  return live or now < finish_at
end

local ok, err = pcall(function()
  while frame() do end
end)
watcher:close()
os.remove(script)
os.remove(dir)
if not ok and not tostring(err):find("interrupted") then error(err, 0) end

say(("demo: %d frames, %d reloads, %d error(s) shown, score %d"):format(
  frames, reloads, errors_shown, game.score()))
if live then return end
-- the scripted session checks what it showed
local checks = {
  { reloads == 2, "two successful reloads" },
  { errors_shown >= 1, "the syntax error was reported" },
  { game.score() == frames, "the score never reset" },
  { game.message == "version 3: fixed" and game.speed == 3, "the last edit is live" },
}
local failed = 0
for _, c in ipairs(checks) do
  say((c[1] and "ok:   " or "FAIL: ") .. c[2])
  if not c[1] then failed = failed + 1 end
end
os.exit(failed == 0 and 0 or 1)
