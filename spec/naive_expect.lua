-- Reads busted's TAP output of reload_spec.lua run against the naive reloader
-- (HOTRELOAD_SPEC_NAIVE=1) and checks that every rule the naive snippet gets wrong has a
-- failing spec: evidence that the rule specs can fail. Exits 1 if one does not.
local expect_fail = { 1, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14 }
local failed = {}
for line in io.lines() do
  local rule = line:match("^not ok %d+ %- rule (%d+):")
  if rule then failed[tonumber(rule)] = true end
end
local missing = {}
for _, rule in ipairs(expect_fail) do
  if not failed[rule] then missing[#missing + 1] = "rule " .. rule end
end
if #missing > 0 then
  io.stderr:write("specs that pass with the naive reloader: ", table.concat(missing, ", "), "\n")
  os.exit(1)
end
print(("naive reloader fails all %d rules it gets wrong"):format(#expect_fail))
