-- POST /v1/debit: usage a gateway's upstream reported after the response,
-- taken from limits whatever is left (never refused): a rate's backlog grows
-- past its burst (the next requests wait), a quota's count past its requests
-- (refused until the window ends).
--
-- KEYS    per item i (1-based): KEYS[i] its counter
--           rate:  tg:{<scope>}:rl:<limit>                 string "<tat_us>:<emission_us>"
--           quota: tg:{<scope>}:q:<limit>:<window_end_s>   integer: slots taken in the window
-- ARGV    4 per item: kind ('rate'|'quota'), a (emission_us | requests), b (capacity_us | window_end_s), units
-- Returns 1.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local kind = ARGV[base + 1]
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  local units = tonumber(ARGV[base + 4])
  if kind == 'rate' then
    local emission = a
    local tat = current_tat(KEYS[i], emission, now) + units * emission
    local ttl_ms = math.ceil((tat - now) / 1000)
    redis.call('SET', KEYS[i], string.format('%.0f:%.0f', tat, emission), 'PX', ttl_ms)
  else
    local used = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    -- Kept an hour past the window, like the leases' counters.
    redis.call('SET', KEYS[i], string.format('%.0f', used + units), 'EXAT', b + 3600)
  end
end
return 1
