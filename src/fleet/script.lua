-- Fleet admission: one atomic step per handshake (src/fleet/mod.rs names
-- the keys and arguments). Single use, reconnect grant, revoke bar, and the
-- global, per-user and per-VM counts as leases.
--
-- KEYS: 1 ticket hash, 2 VM leases, 3 user leases, 4 all leases,
--       5 this relay's sessions, 6 nodes, 7 jtis by user, 8 jtis by VM
-- ARGV: 1 now (ms), 2 member, 3 client IP, 4 time check failed (1/0),
--       5 deadline for a first use (s), 6 keep until (ms: exp + leeway),
--       7 grace (ms), 8 lease (ms), 9 max sessions, 10 max per user,
--       11 max per VM (0 = off), 12 replace (1/0), 13 session JSON,
--       14 events channel, 15 session id, 16 node, 17 sub, 18 vm, 19 jti hash
-- Returns {"ok", reconnect, deadline, replaced} or {"deny", reason}.
local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[7])
local lease = tonumber(ARGV[8])
local t = KEYS[1]
local f = redis.call('HMGET', t, 'live', 'ip', 'dl', 'gr', 'rv', 'le', 'ku')
if f[5] == '1' then
  return {'deny', 'revoked'}
end
local deadline, reconnect
if f[3] then
  -- Used before: only a reconnect grant lets it in again.
  local gr = tonumber(f[4])
  if f[1] then
    local le = tonumber(f[6]) or 0
    if le >= now then
      return {'deny', 'used'}
    end
    -- Its relay stopped renewing the lease (it died): as an abnormal end
    -- when the lease ran out.
    gr = le + grace
  end
  deadline = tonumber(f[3])
  if not gr or f[2] ~= ARGV[3] or now > gr or now >= deadline * 1000 then
    return {'deny', 'used'}
  end
  reconnect = 1
else
  if ARGV[4] == '1' then
    return {'deny', 'time'}
  end
  deadline = tonumber(ARGV[5])
  reconnect = 0
end

local function live(k)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. now)
  return redis.call('ZCARD', k)
end
local max_all, max_user, max_vm = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
if max_all > 0 and live(KEYS[4]) >= max_all then
  return {'deny', 'global'}
end
if max_user > 0 and live(KEYS[3]) >= max_user then
  return {'deny', 'user'}
end
local replaced = 0
if max_vm > 0 then
  local n = live(KEYS[2])
  if n >= max_vm then
    if ARGV[12] ~= '1' then
      return {'deny', 'vm'}
    end
    -- Replace: the VM's oldest sessions go (4001), wherever they live; they
    -- stop counting for the VM at once.
    local members = redis.call('ZRANGE', KEYS[2], 0, -1)
    table.sort(members)
    for i = 1, n - max_vm + 1 do
      redis.call('ZREM', KEYS[2], members[i])
      redis.call('PUBLISH', ARGV[14], 'replace ' .. members[i])
      replaced = replaced + 1
    end
  end
end

local lease_end = now + lease
for i = 2, 4 do
  redis.call('ZADD', KEYS[i], lease_end, ARGV[2])
  redis.call('PEXPIRE', KEYS[i], 2 * lease)
end
local rec = ARGV[13]
if reconnect == 1 then
  local s = cjson.decode(rec)
  s['reconnect'] = true
  rec = cjson.encode(s)
end
redis.call('HSET', KEYS[5], ARGV[15], rec)
redis.call('PEXPIRE', KEYS[5], 2 * lease)
redis.call('ZADD', KEYS[6], lease_end, ARGV[16])
local ku = math.max(tonumber(f[7]) or 0, tonumber(ARGV[6]))
redis.call('HSET', t, 'live', ARGV[2], 'le', lease_end, 'ip', ARGV[3], 'dl', deadline,
  'ku', ku, 'sub', ARGV[17], 'vm', ARGV[18])
redis.call('HDEL', t, 'gr')
local keep = math.max(ku, lease_end + grace)
redis.call('PEXPIREAT', t, keep)
for i = 7, 8 do
  redis.call('SADD', KEYS[i], ARGV[19])
  if redis.call('PTTL', KEYS[i]) < keep - now then
    redis.call('PEXPIRE', KEYS[i], keep - now)
  end
end
return {'ok', reconnect, deadline, replaced}
