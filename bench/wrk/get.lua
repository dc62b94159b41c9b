-- GET one of the user's 20 tasks, chosen at random
local ids = {}
for id in string.gmatch(os.getenv("BENCH_TASK_IDS"), "[^,]+") do ids[#ids + 1] = id end
local base = os.getenv("BENCH_TASKS_PATH")
request = function()
  return wrk.format("GET", base .. "/" .. ids[math.random(#ids)])
end
