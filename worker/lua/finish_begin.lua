-- Claim the finishing of a run whose every batch is stored, in one step (store.finalize).
-- The batch count is read here, with the done set, not passed in: a caller that read it
-- before a resume added batches would otherwise finish the run over its old batches only,
-- a verdict over fewer cases than it now has.
-- KEYS[1]  run:{id}       hash  batch_count, state; gets finishing (the claim)
-- KEYS[2]  run:{id}:done  set   batches stored
-- ARGV[1]  now (ms): the claim, and its token for finish_commit.lua
-- ARGV[2]  claims made before this (ms) are a dead finisher's and are taken over
-- Returns the batch count to finish over, or -1 (finished, being finished, or batches missing).
if redis.call('HGET', KEYS[1], 'state') == 'finished' then
  return -1
end
local claim = tonumber(redis.call('HGET', KEYS[1], 'finishing') or '0')
if claim > tonumber(ARGV[2]) then
  return -1
end
local batch_count = tonumber(redis.call('HGET', KEYS[1], 'batch_count') or '0')
if redis.call('SCARD', KEYS[2]) < batch_count then
  return -1
end
redis.call('HSET', KEYS[1], 'finishing', ARGV[1])
return batch_count
