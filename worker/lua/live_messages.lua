-- The ids of a run's messages that are still in the broker: queued, or delivered to a
-- worker and not yet acknowledged (running, or holding a retry's countdown).
-- Atomic, so a message moving between the queue and the unacked hash (a delivery, a retry
-- published before its predecessor is acknowledged) is seen in one place or the other.
-- KEYS[1..n-1]  the queue's lists (kombu keeps one per priority step)
-- KEYS[n]       kombu's unacked hash (delivery tag -> [message, exchange, routing key])
-- ARGV[1]       '"id": "' .. run_id .. ':'  (a message's task id is "<run_id>:...")
-- Lists are read 1,000 messages at a time, so memory stays bounded by a chunk.
local needle = ARGV[1]
local found = {}
local function scan(message)
  local first, last = string.find(message, needle, 1, true)
  if first then
    local close = string.find(message, '"', last + 1, true)
    if close then
      found[#found + 1] = string.sub(message, first + 7, close - 1)
    end
  end
end
for i = 1, #KEYS - 1 do
  local length = redis.call('LLEN', KEYS[i])
  for start = 0, length - 1, 1000 do
    for _, message in ipairs(redis.call('LRANGE', KEYS[i], start, start + 999)) do
      scan(message)
    end
  end
end
for _, message in ipairs(redis.call('HVALS', KEYS[#KEYS])) do
  scan(message)
end
return found
