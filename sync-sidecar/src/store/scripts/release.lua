-- POST /v1/release: give back a claim still held.
-- KEYS[1] tg:{<scope>}:idem:<key>, KEYS[2] tg:{<scope>}:idem:live
-- ARGV    key, generation
-- Returns 1 when the record was `claimed` with this generation (now deleted), else 0.
local record = redis.call('HMGET', KEYS[1], 'state', 'gen')
if record[1] ~= 'claimed' or record[2] ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
