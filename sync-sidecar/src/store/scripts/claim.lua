-- POST /v1/claim: claim an Idempotency-Key or learn what is stored under it.
-- KEYS[1] tg:{<scope>}:idem:<key>   (hash: state, gen, route, body, status, response)
-- KEYS[2] tg:{<scope>}:idem:live    (sorted set: live record keys by expiry, ms)
-- KEYS[3] tg:{<scope>}:idem:gen     (counter: the last claim generation)
-- ARGV    key, route, body ('' when unknown), in_flight_ms, scope_limit, ttl_ms
--         (a claim answers `in_flight` until `until`; it stays completable for
--         ttl_ms more, so a complete retried after a failure still lands, unless
--         the key was claimed again in between: a new claim has a new gen)
-- Returns {'claimed', gen} | {'in_flight'} | {'mismatch'} | {'need_body'}
--       | {'replay', response_json} | {'not_replayable', status}
--       | {'tenant_full', retry_after_seconds}.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local member = ARGV[1]
local route = ARGV[2]
local body = ARGV[3]
local in_flight_ms = tonumber(ARGV[4])
local scope_limit = tonumber(ARGV[5])
local ttl_ms = tonumber(ARGV[6]) or 0

local record = redis.call('HMGET', KEYS[1], 'state', 'route', 'body', 'status', 'response', 'until')
local state = record[1]
if state == 'claimed' and record[6] and tonumber(record[6]) <= now_ms then
  -- Its in-flight time is over: the key may be claimed again.
  state = nil
end
if not state then
  -- Drop expired members (and this key's own stale one) before counting.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  redis.call('ZREM', KEYS[2], member)
  if redis.call('ZCARD', KEYS[2]) >= scope_limit then
    local retry = 1
    local soonest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    if soonest[2] then
      retry = math.ceil((tonumber(soonest[2]) - now_ms) / 1000)
      if retry < 1 then
        retry = 1
      end
    end
    return {'tenant_full', retry}
  end
  local gen = redis.call('INCR', KEYS[3])
  redis.call('DEL', KEYS[1])
  local claimed_until = now_ms + in_flight_ms
  if body == '' then
    redis.call('HSET', KEYS[1], 'state', 'claimed', 'gen', gen, 'route', route, 'until', claimed_until)
  else
    redis.call('HSET', KEYS[1], 'state', 'claimed', 'gen', gen, 'route', route, 'until', claimed_until,
      'body', body)
  end
  redis.call('PEXPIRE', KEYS[1], in_flight_ms + ttl_ms)
  redis.call('ZADD', KEYS[2], now_ms + in_flight_ms, member)
  return {'claimed', gen}
end
if record[2] ~= route then
  return {'mismatch'}
end
if state == 'claimed' then
  return {'in_flight'}
end
if body == '' then
  return {'need_body'}
end
if record[3] ~= body then
  return {'mismatch'}
end
if record[5] then
  return {'replay', record[5]}
end
return {'not_replayable', tonumber(record[4]) or 0}
