-- `tenant-guard-sidecar usage`: what Redis holds for one tenant's limits,
-- read without changing anything. Every key carries the tenant's hash tag,
-- so all of them live on the node of KEYS[1] (any key of the tenant).
--
-- ARGV[1] the key prefix `tg:{<scope>}:`, ARGV[2] the most keys returned
-- per item, then per item: kind ('rate'|'quota'), name, keyed ('0'|'1'),
-- window_end_s (quotas; '0' for rates).
-- Returns {now_s, now_us}, then per item a list of {key, value} flattened.
local time = redis.call('TIME')
local out = {{tonumber(time[1]), tonumber(time[1]) * 1000000 + tonumber(time[2])}}
local prefix = ARGV[1]
local most = tonumber(ARGV[2])
local count = (#ARGV - 2) / 4
for i = 1, count do
  local base = 2 + (i - 1) * 4
  local kind, name, keyed, window_end = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local exact
  local pattern
  if kind == 'rate' then
    exact = prefix .. 'rl:' .. name
    pattern = prefix .. 'rl:' .. name .. '~*'
  else
    exact = prefix .. 'q:' .. name .. ':' .. window_end
    pattern = prefix .. 'q:' .. name .. '~*:' .. window_end
  end
  local found = {}
  if keyed == '0' then
    local value = redis.call('GET', exact)
    if value then
      found[#found + 1] = exact
      found[#found + 1] = value
    end
  else
    local cursor = '0'
    repeat
      local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
      cursor = page[1]
      for _, key in ipairs(page[2]) do
        if #found < most * 2 then
          local value = redis.call('GET', key)
          if value then
            found[#found + 1] = key
            found[#found + 1] = value
          end
        end
      end
    until cursor == '0' or #found >= most * 2
  end
  out[#out + 1] = found
end
return out
