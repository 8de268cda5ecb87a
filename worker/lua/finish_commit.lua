-- Write a finished run's statistics if this finisher's claim still stands: a resume that
-- reopened the run since (store.reopen removes the claim) means they cover too few batches,
-- and a claim taken over (this finisher was taken for dead) means another one writes.
-- KEYS[1]  run:{id}  hash  finishing must still be ARGV[1]
-- KEYS[2]  active    set   the run leaves it
-- ARGV[1]  the claim finish_begin.lua wrote
-- ARGV[2]  finished_at (ISO 8601)
-- ARGV[3]  the statistics (JSON)
-- ARGV[4]  the run id
-- Returns 1 when written, 0 when not.
if redis.call('HGET', KEYS[1], 'finishing') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'finished', 'finished_at', ARGV[2], 'statistics', ARGV[3])
redis.call('HDEL', KEYS[1], 'finishing')
redis.call('SREM', KEYS[2], ARGV[4])
return 1
