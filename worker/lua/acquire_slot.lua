-- Admit one attempt of a run: refuse it if the case already ended (a redelivered or
-- duplicated message) or the run is cancelled, else take one of the
-- run's concurrency slots if one is free, and say how long the run's 429 cooldown has
-- left. One round trip where three separate commands would need three.
-- KEYS[1]  sorted set of leases: member = lease id, score = expiry (ms, Redis server time)
-- KEYS[2]  the run's cancel flag (a string, present once cancelled)
-- KEYS[3]  the run's cooldown (a string with a TTL, present while Dify said 429)
-- ARGV[1]  the limit (slots in the whole fleet)
-- ARGV[2]  lease id: the case's task id, so one case holds one lease at most
-- ARGV[3]  lease time to live (ms); holders renew it, a dead holder's lease lapses
-- KEYS[4]  the run's final statuses (hash: task id -> status)
-- ARGV[4]  time to live of the whole key (s), so an abandoned run leaves nothing behind
-- ARGV[5]  the case's task id
-- KEYS[5]  the run's learned cap (learn_limit.lua): fewer slots while Dify refuses more
-- Returns {code, cooldown_ms}: code 3 = the case already ended, 2 = cancelled, 1 = slot
-- taken, 0 = all slots held, 4 = the case holds a live lease already (a second delivery of a
-- case still running elsewhere: it waits until that one ends or its lease lapses).
if redis.call('HEXISTS', KEYS[4], ARGV[5]) == 1 then
  return {3, 0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {2, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return {4, 0}
end
local limit = tonumber(ARGV[1])
local cap = tonumber(redis.call('GET', KEYS[5]) or '0')
if cap > 0 and cap < limit then
  limit = cap
end
if redis.call('ZCARD', KEYS[1]) >= limit then
  return {0, 0}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
local cooldown = redis.call('PTTL', KEYS[3])
if cooldown < 0 then
  cooldown = 0
end
return {1, cooldown}
