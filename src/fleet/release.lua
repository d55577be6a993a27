-- A session ended (src/fleet/mod.rs ReleaseArgs): its leases go, and its
-- ticket gets a reconnect grant if one is due.
--
-- KEYS: 1 ticket hash, 2 VM leases, 3 user leases, 4 all leases,
--       5 this relay's sessions
-- ARGV: 1 now (ms), 2 member, 3 session id, 4 grant (1/0), 5 grace (ms),
--       6 client IP, 7 deadline (s), 8 keep until (ms), 9 sub, 10 vm
local now = tonumber(ARGV[1])
for i = 2, 4 do
  redis.call('ZREM', KEYS[i], ARGV[2])
end
redis.call('HDEL', KEYS[5], ARGV[3])
local t = KEYS[1]
local f = redis.call('HMGET', t, 'live', 'rv', 'ku', 'dl')
if f[3] == false and f[4] == false then
  -- The store lost the ticket (restarted empty): write it again.
  redis.call('HSET', t, 'ip', ARGV[6], 'dl', ARGV[7], 'ku', ARGV[8], 'sub', ARGV[9], 'vm', ARGV[10])
  f = {ARGV[2], false, ARGV[8], ARGV[7]}
end
if f[1] ~= ARGV[2] then
  -- Another session holds it now (a reconnect after this one's lease ran out).
  return 0
end
redis.call('HDEL', t, 'live', 'le')
local ku = tonumber(f[3]) or 0
if ARGV[4] == '1' and f[2] ~= '1' then
  local gr = now + tonumber(ARGV[5])
  redis.call('HSET', t, 'gr', gr)
  redis.call('PEXPIREAT', t, math.max(ku, gr))
  return 1
end
redis.call('HDEL', t, 'gr')
-- Remembered until exp + leeway; past that the ticket is refused as expired.
redis.call('PEXPIREAT', t, math.max(ku, now))
return 0
