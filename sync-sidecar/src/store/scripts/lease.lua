-- POST /v1/lease: give back unused slots of one tenant limit, then take up to
-- `want` GCRA slots: `need` of them all or none (the asking request's own), the
-- rest up to a fair share of what is left (what is free, divided by the
-- gateways that leased this limit within `window_ms`, this one included).
-- KEYS[1] tg:{<scope>}:rl:<limit>   (string "<tat_us>:<emission_us>")
-- KEYS[2] tg:{<scope>}:lh:<limit>   (sorted set: lease holders by last lease, ms)
-- ARGV    emission_us, capacity_us, want, need, returned, holder, window_ms
-- Returns {granted, remaining, reset_seconds, retry_after_seconds}.
-- Times are integral microseconds held in doubles (exact below 2^53).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local now_ms = math.floor(now / 1000)
local emission = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local returned = tonumber(ARGV[5])
local holder = ARGV[6]
local window_ms = tonumber(ARGV[7])

-- current_tat: tat.lua (prepended). A changed limit keeps its backlog.
local tat = current_tat(KEYS[1], emission, now)

local function store_tat()
  if tat > now then
    local ttl_ms = math.ceil((tat - now) / 1000)
    redis.call('SET', KEYS[1], string.format('%.0f:%.0f', tat, emission), 'PX', ttl_ms)
  else
    redis.call('DEL', KEYS[1])
  end
end

-- Slots given back were never spent: the bucket gets them again, never
-- past full (a bucket that refilled meanwhile keeps only what fits).
local changed = false
if returned > 0 and tat > now then
  tat = math.max(now, tat - returned * emission)
  changed = true
end

local free = math.floor((now + capacity - tat) / emission)
if free < 0 then
  free = 0
end
if want == 0 or free < need then
  if changed then
    store_tat()
  end
  if want == 0 then
    return {0, free, math.ceil((tat - now) / 1000000), 0}
  end
  local retry = math.ceil((tat + need * emission - now - capacity) / 1000000)
  if retry < 1 then
    retry = 1
  end
  return {0, 0, math.ceil((tat - now) / 1000000), retry}
end

local holders = 1
if holder ~= '' then
  redis.call('ZADD', KEYS[2], now_ms, holder)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - window_ms)
  redis.call('PEXPIRE', KEYS[2], window_ms)
  holders = redis.call('ZCARD', KEYS[2])
end
local extra = math.floor((free - need) / holders)
if extra > want - need then
  extra = want - need
end
local granted = need + extra
tat = tat + granted * emission
store_tat()
return {granted, free - granted, math.ceil((tat - now) / 1000000), 0}
