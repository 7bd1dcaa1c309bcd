-- The demo's game script. `make demo` runs a copy of it and edits the copy while it runs;
-- with `make demo ARGS=--live`, edit the copy yourself (the demo prints its path) and save.
local M = {}

M.color = "green" -- try "red", "yellow", "blue", "magenta", "cyan"
M.speed = 1 -- cells per frame
M.message = "version 1"
M.width = 40

M.x = 0 -- state: where the sprite is (kept across reloads)
local score = 0 -- state: frames survived (kept across reloads)

local COLORS = { red = 31, green = 32, yellow = 33, blue = 34, magenta = 35, cyan = 36 }

function M.update()
  M.x = (M.x + M.speed) % M.width
  score = score + 1
end

function M.score()
  return score
end

function M.draw()
  local track = string.rep(".", M.x) .. "@" .. string.rep(".", M.width - M.x - 1)
  return ("\27[%dm%s\27[0m  score %5d  %s"):format(COLORS[M.color] or 37, track, score, M.message)
end

return M
