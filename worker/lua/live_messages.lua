-- The ids of a run's messages in one slice of the broker: a slice of a queue list, or kombu's
-- unacked hash (delivery tag -> [message, exchange, routing key]) whole.
-- One call reads at most ARGV[3] list entries, so Redis is never held long (a single script
-- over a 100,000-message queue took 8 s, past Redis's 5-s busy threshold: every other client
-- would have been answered BUSY). worker/live_messages.py calls it slice by slice.
-- KEYS[1]  a queue list, or the unacked hash
-- ARGV[1]  '"id": "' .. run_id .. ':'  (a message's task id is "<run_id>:...")
-- ARGV[2]  the first list index of the slice; ARGV[3] the slice's length
-- Returns {ids..., next index or -1 when the list (or the hash) is done}.
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
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  for _, message in ipairs(redis.call('HVALS', KEYS[1])) do
    scan(message)
  end
  found[#found + 1] = -1
  return found
end
local start = tonumber(ARGV[2])
local stop = start + tonumber(ARGV[3]) - 1
local slice = redis.call('LRANGE', KEYS[1], start, stop)
for _, message in ipairs(slice) do
  scan(message)
end
if #slice < tonumber(ARGV[3]) then
  found[#found + 1] = -1
else
  found[#found + 1] = stop + 1
end
return found
