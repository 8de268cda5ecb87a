-- Fleet-wide rate limits with bursts: GCRA (the generic cell rate algorithm), one key per
-- limit holding the theoretical arrival time (TAT, ms). A request is allowed when every
-- limit allows it; then every TAT moves on by that limit's emission interval.
-- KEYS[i]       the TAT key of limit i
-- ARGV[2i - 1]  emission interval of limit i (ms per request: 1000 / requests_per_second)
-- ARGV[2i]      burst tolerance of limit i (ms: (burst - 1) * interval)
-- Returns 0 when the request may go now, else how many ms to wait before asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local allowed_at = tat - tonumber(ARGV[2 * i])
  if allowed_at > now and allowed_at - now > wait then wait = allowed_at - now end
end
if wait > 0 then
  return math.ceil(wait)
end
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tats[i] + interval
  redis.call('SET', key, tostring(tat), 'PX', math.ceil(tat - now + tolerance) + 1000)
end
return 0
