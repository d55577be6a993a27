-- Writes a relay's live sessions again, after the store came back (it may
-- have restarted empty) or when the store's count of them differs from the
-- relay's: their leases, records and tickets, so a store that lost its data
-- neither reopens a live ticket nor forgets a count.
-- Tickets another session holds now, or revoked, are left as they are.
--
-- KEYS: 1 this relay's sessions, 2 nodes, 3 all leases
-- ARGV: 1 now (ms), 2 lease (ms), 3 grace (ms), 4 key prefix, 5 node,
--       6... session records (JSON, with "keep_ms" and "deadline")
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local p = ARGV[4]
local lease_end = now + lease
local n = 0
-- The relay's list is the truth: entries it no longer has go (their
-- leases, no longer renewed, run out).
redis.call('DEL', KEYS[1])
for i = 6, #ARGV do
  local v = cjson.decode(ARGV[i])
  local m = v['member']
  local t = p .. 't:' .. v['jti_sha256']
  local f = redis.call('HMGET', t, 'live', 'rv', 'le')
  local other = f[1] and f[1] ~= m and (tonumber(f[3]) or 0) >= now
  if f[2] ~= '1' and not other then
    local keep = math.max(v['keep_ms'], lease_end + grace)
    redis.call('HSET', t, 'live', m, 'le', lease_end, 'ip', v['client'], 'dl', v['deadline'],
      'ku', v['keep_ms'], 'sub', v['sub'], 'vm', v['vm'])
    redis.call('PEXPIREAT', t, keep)
    for _, k in ipairs({p .. 'vm:' .. v['vm'], p .. 'user:' .. v['sub'], KEYS[3]}) do
      redis.call('ZADD', k, lease_end, m)
      redis.call('PEXPIRE', k, 2 * lease)
    end
    for _, k in ipairs({p .. 'ix:sub:' .. v['sub'], p .. 'ix:vm:' .. v['vm']}) do
      redis.call('SADD', k, v['jti_sha256'])
      if redis.call('PTTL', k) < keep - now then
        redis.call('PEXPIRE', k, keep - now)
      end
    end
    v['keep_ms'] = nil
    v['deadline'] = nil
    redis.call('HSET', KEYS[1], tostring(v['id']), cjson.encode(v))
    n = n + 1
  end
end
redis.call('PEXPIRE', KEYS[1], 2 * lease)
redis.call('ZADD', KEYS[2], lease_end, ARGV[5])
return n
