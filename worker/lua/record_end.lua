-- A case's end, recorded and counted exactly once, however often its message is delivered.
-- A worker killed after recording a case but before acknowledging its message gets the case
-- redelivered; the second end must neither count again nor replace the first result.
-- KEYS[1]  run:{id}:final         hash  task_id -> final status (every case that ended)
-- KEYS[2]  run:{id}:ended:{batch} hash  task_id -> TaskResult JSON, for the chord callback
-- KEYS[3]  run:{id}:progress      hash  counts by status, failures
-- KEYS[4]  run:{id}:waiting       set   cases with a retry waiting
-- KEYS[5]  run:{id}:batch_ends    hash  batch -> cases of it that ended (the fleet sweep closes
--                                       a batch whose cases all ended, if its chord did not)
-- ARGV[1] task id, ARGV[2] TaskResult JSON, ARGV[3] status, ARGV[4] '1' when it is a failure,
-- ARGV[5] time to live of the keys (s), ARGV[6] the batch
-- Returns the run's failure count (0 when this end is no failure), or -1 when the case had
-- already ended (nothing written).
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then
  return -1
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
local failures = 0
if ARGV[4] == '1' then
  failures = redis.call('HINCRBY', KEYS[3], 'failures', 1)
end
for _, i in ipairs({1, 2, 3, 5}) do
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
return failures
