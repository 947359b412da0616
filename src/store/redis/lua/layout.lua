-- Claims the key layout for this node's --stream-separator (see
-- src/store/redis/keys.rs): nodes with different separators would keep a
-- trackingId of an account in two histories at once (two key layouts),
-- each issuing its own ids. The claim is renewed by every node each second
-- (with the keep-alive ping) and lapses when no node has renewed it for
-- ttl_ms: a layout can change only once every node of the old one stopped.
--
-- KEYS[1]      layout: string, the separator the running nodes use ('' for none)
-- ARGV[1]      separator  this node's ('' for none)
-- ARGV[2]      ttl_ms     how long a claim lasts without renewal
--
-- Returns false when claimed (or renewed), else the other layout's separator.
local layout = KEYS[1]
local separator, ttl = ARGV[1], ARGV[2]
local current = redis.call('GET', layout)
if current and current ~= separator then
  return current
end
redis.call('SET', layout, separator, 'PX', ttl)
return false
