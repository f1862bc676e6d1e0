-- POST /v1/complete: record the response of a claim still held.
-- KEYS[1] tg:{<scope>}:idem:<key>, KEYS[2] tg:{<scope>}:idem:live
-- ARGV    key, generation, body ('' when unknown), status, response_json ('' when
--         not replayable), ttl_ms
-- Returns 1 when the record was `claimed` with this generation (now `done`), else 0.
-- A claim past its in-flight time is still completed while nobody claimed the
-- key again (a complete retried after a failure records the one execution).
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local record = redis.call('HMGET', KEYS[1], 'state', 'gen')
if record[1] ~= 'claimed' or record[2] ~= ARGV[2] then
  return 0
end
local ttl_ms = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[4])
redis.call('HDEL', KEYS[1], 'until')
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'body')
else
  redis.call('HSET', KEYS[1], 'body', ARGV[3])
end
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[1], 'response')
else
  redis.call('HSET', KEYS[1], 'response', ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('ZADD', KEYS[2], now_ms + ttl_ms, ARGV[1])
return 1
