-- The demo's scripted session runs to its end and its own checks pass (with shorter steps).
local h = require "spec.helpers"

describe("examples/demo.lua", function()
  it("edits its game script, reports the broken edit, keeps the score, exits 0", function()
    local cmd = ("HOTRELOAD_DEMO_STEP=0.5 timeout 30 %s -e %q examples/demo.lua 2>&1"):format(
      h.interpreter, ("package.cpath = %q"):format(package.cpath))
    local p = assert(io.popen(cmd .. "; echo \"exit $?\""))
    local out = p:read("*a")
    p:close()
    assert.matches("exit 0\n$", out)
    for _, check in ipairs({ "two successful reloads", "the syntax error was reported",
      "the score never reset", "the last edit is live" }) do
      assert.matches("ok:   " .. check, out, 1, true)
    end
  end)
end)
