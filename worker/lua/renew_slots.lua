-- Extend leases this process still holds (XX: a lapsed lease is not brought back).
-- KEYS[i]  the sorted set of lease i
-- ARGV[1]  lease time to live (ms); ARGV[1 + i] the id of lease i
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local renewed = 0
for i, key in ipairs(KEYS) do
  renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', expiry, ARGV[i + 1])
end
return renewed
