-- Count a run's progress afresh from its final statuses, in one step (resume).
-- Read then written from Python, a case ending in between (the run may still be going)
-- would be counted in neither: seen once, 119 succeeded for 120 results.
-- KEYS[1]  run:{id}:final     hash  task_id -> final status
-- KEYS[2]  run:{id}:progress  hash  rewritten: a count per status, failures, retries (kept)
-- KEYS[3]  run:{id}           hash  gets resumed_done: how many cases had ended
-- ARGV[1]  time to live of the progress hash (s)
-- Returns how many cases had ended.
local retries = redis.call('HGET', KEYS[2], 'retries') or 0
local counts = {}
local ended = 0
for _, status in ipairs(redis.call('HVALS', KEYS[1])) do
  counts[status] = (counts[status] or 0) + 1
  ended = ended + 1
end
redis.call('DEL', KEYS[2])
local failures = 0
for status, n in pairs(counts) do
  redis.call('HSET', KEYS[2], status, n)
  if status == 'failed' or status == 'timeout' or status == 'error' then
    failures = failures + n
  end
end
redis.call('HSET', KEYS[2], 'failures', failures, 'retries', retries)
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'resumed_done', ended)
return ended
