-- Lower a run's concurrency to what Dify accepts, for a while (worker/run_control.py).
-- Called by an attempt that Dify refused for the app's concurrency limit, while it still
-- holds its slot: the other live leases are the runs Dify accepted at that moment.
-- KEYS[1]  the run's slots (sorted set: lease id -> expiry, ms)
-- KEYS[2]  the run's learned cap (a string with a TTL; acquire_slot.lua honours it)
-- ARGV[1]  the limit Dify's answer names ("... allowed for <app> is N."), 0 when none
-- ARGV[2]  how long the cap holds (ms): then the run tries its own concurrency again
-- Returns the cap now in force.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = math.max(1, redis.call('ZCARD', KEYS[1]) - 1)
local named = tonumber(ARGV[1])
if named > 0 and named < cap then
  cap = named
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current > 0 and current < cap then
  cap = current
end
redis.call('SET', KEYS[2], cap, 'PX', tonumber(ARGV[2]))
return cap
