-- Take one of a run's concurrency slots, if one is free.
-- KEYS[1]  sorted set of leases: member = lease id, score = expiry (ms, Redis server time)
-- ARGV[1]  the limit (slots in the whole fleet)
-- ARGV[2]  lease id
-- ARGV[3]  lease time to live (ms); holders renew it, a dead holder's lease lapses
-- ARGV[4]  time to live of the whole key (s), so an abandoned run leaves nothing behind
-- Returns 1 when the slot is taken, 0 when all are held.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
