-- Renews the leases of one relay's live sessions (src/fleet/store.rs, every
-- lease / 3). A replaced session is not counted again for its VM (XX).
--
-- KEYS: 1 this relay's sessions, 2 nodes, 3 all leases
-- ARGV: 1 now (ms), 2 lease (ms), 3 grace (ms), 4 key prefix, 5 node
-- Returns the number of sessions the store holds for this relay (the relay
-- writes them again when it differs from its own count).
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local p = ARGV[4]
local lease_end = now + lease
local s = redis.call('HVALS', KEYS[1])
for _, rec in ipairs(s) do
  local v = cjson.decode(rec)
  local m = v['member']
  local keys = {p .. 'vm:' .. v['vm'], p .. 'user:' .. v['sub'], KEYS[3]}
  for _, k in ipairs(keys) do
    redis.call('ZADD', k, 'XX', lease_end, m)
    redis.call('PEXPIRE', k, 2 * lease)
  end
  local t = p .. 't:' .. v['jti_sha256']
  if redis.call('HGET', t, 'live') == m then
    redis.call('HSET', t, 'le', lease_end)
    local keep = math.max(tonumber(redis.call('HGET', t, 'ku')) or 0, lease_end + grace)
    redis.call('PEXPIREAT', t, keep)
    for _, k in ipairs({p .. 'ix:sub:' .. v['sub'], p .. 'ix:vm:' .. v['vm']}) do
      if redis.call('PTTL', k) < keep - now then
        redis.call('PEXPIRE', k, keep - now)
      end
    end
  end
end
if #s > 0 then
  redis.call('PEXPIRE', KEYS[1], 2 * lease)
end
redis.call('ZADD', KEYS[2], lease_end, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
redis.call('PEXPIRE', KEYS[2], 2 * lease)
return #s
