-- Every live relay's sessions, for /sessions?fleet=1.
-- KEYS: 1 nodes; ARGV: 1 now (ms), 2 key prefix
-- Returns the session records (JSON), relay by relay.
local now = tonumber(ARGV[1])
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  for _, rec in ipairs(redis.call('HVALS', ARGV[2] .. 's:' .. node)) do
    out[#out + 1] = rec
  end
end
return out
