-- POST /v1/lease: take up to `want` GCRA slots of one tenant limit.
-- KEYS[1] tg:{<scope>}:rl:<limit>  (string "<tat_us>:<emission_us>")
-- ARGV    emission_us, capacity_us, want
-- Returns {granted, remaining, reset_seconds, retry_after_seconds}.
-- Times are integral microseconds held in doubles (exact below 2^53).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local emission = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])

local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local sep = string.find(stored, ':', 1, true)
  if sep then
    local stored_tat = tonumber(string.sub(stored, 1, sep - 1))
    local stored_emission = tonumber(string.sub(stored, sep + 1))
    if stored_tat and stored_emission and stored_emission >= 1 then
      if stored_emission ~= emission and stored_tat > now then
        -- The limit changed: keep the backlog (in slots) in the new unit.
        stored_tat = now + math.ceil((stored_tat - now) / stored_emission * emission)
      end
      if stored_tat > tat then
        tat = stored_tat
      end
    end
  end
end

local free = math.floor((now + capacity - tat) / emission)
if free < 0 then
  free = 0
end
local granted = math.min(want, free)
if granted >= 1 then
  tat = tat + granted * emission
  local ttl_ms = math.ceil((tat - now) / 1000)
  redis.call('SET', KEYS[1], string.format('%.0f:%.0f', tat, emission), 'PX', ttl_ms)
  return {granted, free - granted, math.ceil((tat - now) / 1000000), 0}
end
local retry = math.ceil((tat + emission - now - capacity) / 1000000)
if retry < 1 then
  retry = 1
end
return {0, 0, math.ceil((tat - now) / 1000000), retry}
