-- Revokes tickets fleet-wide (src/fleet/mod.rs revoke_call): each matched
-- ticket is refused until exp + grace (a jti never seen until the latest exp
-- a ticket valid now can have, + grace), its reconnect grant is voided, and
-- every relay hears the selector on the events channel and closes its
-- matching sessions with 1008.
--
-- KEYS: the ticket hash (jti), the jtis-by-user/VM set (index), or the
--       ticket hashes (list)
-- ARGV: 1 mode (jti, index, list), 2 now (ms), 3 grace (ms),
--       4 unseen until (ms), 5 key prefix, 6 events channel, 7 event,
--       8... jti hashes (jti, list)
-- Returns {live sessions, grants voided, barred (1/0)}.
local now = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local p = ARGV[5]
local hashes = {}
if ARGV[1] == 'index' then
  hashes = redis.call('SMEMBERS', KEYS[1])
else
  for i = 8, #ARGV do
    hashes[#hashes + 1] = ARGV[i]
  end
end
local sessions, grants, barred = 0, 0, 0
for _, h in ipairs(hashes) do
  local t = p .. 't:' .. h
  local f = redis.call('HMGET', t, 'live', 'le', 'gr', 'rv', 'ku', 'dl')
  if f[6] then
    if f[1] and (tonumber(f[2]) or 0) >= now then
      sessions = sessions + 1
    end
    if f[3] then
      grants = grants + 1
      redis.call('HDEL', t, 'gr')
    end
    if f[4] ~= '1' then
      redis.call('HSET', t, 'rv', '1')
      local keep = (tonumber(f[5]) or now) + grace
      local pttl = redis.call('PTTL', t)
      if pttl >= 0 and now + pttl < keep then
        redis.call('PEXPIREAT', t, keep)
      end
    end
  elseif ARGV[1] == 'jti' and not f[4] then
    local until_ = tonumber(ARGV[4])
    redis.call('HSET', t, 'rv', '1', 'ku', until_)
    redis.call('PEXPIREAT', t, until_)
    barred = 1
  end
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {sessions, grants, barred}
