-- POST /v1/leases: slots of several limits of one tenant at once, all or none.
-- Each item gives back `returned` unused slots first, then needs `need` slots
-- (granted for every item, or for none: a refused request consumes nothing)
-- and may take up to `want` in all, the rest limited to a fair share of what
-- is left (what is free divided by the gateways that leased the limit within
-- `window_ms`, this one included).
--
-- KEYS    per item i (1-based): KEYS[2i-1] its counter, KEYS[2i] its holders
--           rate:  tg:{<scope>}:rl:<limit>                 string "<tat_us>:<emission_us>"
--           quota: tg:{<scope>}:q:<limit>:<window_end_s>   integer: slots taken in the window
--           holders: tg:{<scope>}:lh:<limit>               sorted set
-- ARGV[1] holder, ARGV[2] window_ms, then 6 per item:
--         kind ('rate'|'quota'), a (emission_us | requests), b (capacity_us | window_end_s),
--         want, need, returned
-- Returns per item {granted, remaining, reset_seconds, retry_after_seconds}, flattened.
-- Times are integral microseconds held in doubles (exact below 2^53).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local now_ms = math.floor(now / 1000)
local now_s = tonumber(time[1])
local holder = ARGV[1]
local window_ms = tonumber(ARGV[2])
local count = #KEYS / 2

local items = {}
for i = 1, count do
  local base = 2 + (i - 1) * 6
  local item = {
    key = KEYS[2 * i - 1],
    holders = KEYS[2 * i],
    kind = ARGV[base + 1],
    a = tonumber(ARGV[base + 2]),
    b = tonumber(ARGV[base + 3]),
    want = tonumber(ARGV[base + 4]),
    need = tonumber(ARGV[base + 5]),
    returned = tonumber(ARGV[base + 6]),
  }
  if item.kind == 'rate' then
    local emission = item.a
    local tat = current_tat(item.key, emission, now)
    if item.returned > 0 and tat > now then
      tat = math.max(now, tat - item.returned * emission)
      item.changed = true
    end
    item.tat = tat
    item.free = math.max(0, math.floor((now + item.b - tat) / emission))
  else
    -- A quota: slots taken in the window ending at b (seconds).
    local used = tonumber(redis.call('GET', item.key) or '0') or 0
    if item.returned > 0 and used > 0 then
      used = math.max(0, used - item.returned)
      item.changed = true
    end
    item.used = used
    item.free = math.max(0, item.a - used)
  end
  items[i] = item
end

local function store(item)
  if item.kind == 'rate' then
    if item.tat > now then
      local ttl_ms = math.ceil((item.tat - now) / 1000)
      redis.call('SET', item.key, string.format('%.0f:%.0f', item.tat, item.a), 'PX', ttl_ms)
    else
      redis.call('DEL', item.key)
    end
  else
    -- Kept an hour past the window, so late returns find it.
    redis.call('SET', item.key, string.format('%.0f', item.used), 'EXAT', item.b + 3600)
  end
end

local function reset_seconds(item)
  if item.kind == 'rate' then
    return math.ceil((item.tat - now) / 1000000)
  end
  return math.max(1, item.b - now_s)
end

local refused = false
for i = 1, count do
  if items[i].free < items[i].need then
    refused = true
  end
end

local out = {}
if refused then
  for i = 1, count do
    local item = items[i]
    if item.changed then
      store(item)
    end
    local retry = 0
    if item.free < item.need then
      if item.kind == 'rate' then
        retry = math.max(1, math.ceil((item.tat + item.need * item.a - now - item.b) / 1000000))
      else
        retry = math.max(1, item.b - now_s)
      end
    end
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = reset_seconds(item)
    out[#out + 1] = retry
  end
  return out
end

for i = 1, count do
  local item = items[i]
  local holders = 1
  if holder ~= '' and item.want > item.need then
    redis.call('ZADD', item.holders, now_ms, holder)
    redis.call('ZREMRANGEBYSCORE', item.holders, '-inf', now_ms - window_ms)
    redis.call('PEXPIRE', item.holders, window_ms)
    holders = redis.call('ZCARD', item.holders)
  end
  local extra = math.floor((item.free - item.need) / holders)
  if extra > item.want - item.need then
    extra = item.want - item.need
  end
  local granted = item.need + extra
  if item.kind == 'rate' then
    item.tat = item.tat + granted * item.a
  else
    item.used = item.used + granted
  end
  if granted > 0 or item.changed then
    store(item)
  end
  out[#out + 1] = granted
  out[#out + 1] = item.free - granted
  out[#out + 1] = reset_seconds(item)
  out[#out + 1] = 0
end
return out
