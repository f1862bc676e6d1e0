-- Shared by the lease, leases and debit scripts (prepended when they load).
-- The theoretical arrival time (µs) of the GCRA counter at `key`, in units
-- of `emission` µs per slot, and never before `now`: a value stored with
-- another emission (the limit changed) keeps its backlog, in slots, in the
-- new unit; a missing or unreadable value is a full bucket.
local function current_tat(key, emission, now)
  local tat = now
  local stored = redis.call('GET', key)
  if stored then
    local sep = string.find(stored, ':', 1, true)
    if sep then
      local stored_tat = tonumber(string.sub(stored, 1, sep - 1))
      local stored_emission = tonumber(string.sub(stored, sep + 1))
      if stored_tat and stored_emission and stored_emission >= 1 then
        if stored_emission ~= emission and stored_tat > now then
          stored_tat = now + math.ceil((stored_tat - now) / stored_emission * emission)
        end
        if stored_tat > tat then
          tat = stored_tat
        end
      end
    end
  end
  return tat
end

