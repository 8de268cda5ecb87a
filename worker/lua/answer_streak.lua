-- Streaks of Dify answers that stop a run (worker/answer_guard.py), one hash per run.
-- KEYS[1]: the run's streak hash.
-- ARGV[1]: 'ok' (Dify accepted a call), 'rejected' (401/403/404, or no key on the worker)
--          or 'quota' (429 rate_limit_error); ARGV[2]: the workflow id; ARGV[3]: TTL in seconds.
-- Returns the streak this answer extends: rejected answers of a workflow that never had an
-- accepted one, or quota answers since the last accepted call; 0 for 'ok'.
local kind, workflow, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local streak = 0
if kind == 'ok' then
  redis.call('HSET', KEYS[1], 'ok:' .. workflow, 1, 'quota', 0)
elseif kind == 'rejected' then
  -- Only a workflow's first attempts count: once its key worked, a 401 is that case's own.
  if redis.call('HEXISTS', KEYS[1], 'ok:' .. workflow) == 0 then
    streak = redis.call('HINCRBY', KEYS[1], 'rejected:' .. workflow, 1)
  end
else
  streak = redis.call('HINCRBY', KEYS[1], 'quota', 1)
end
redis.call('EXPIRE', KEYS[1], ttl)
return streak
