-- Claims the key layout for this node's --stream-separator (see
-- src/store/redis/keys.rs): nodes with different separators would keep a
-- trackingId of an account in two histories at once (two key layouts),
-- each issuing its own ids. The claim is renewed by every node each second
-- (with the keep-alive ping) and lapses when no node has renewed it for
-- ttl_ms: a layout can change only once every node of the old one stopped.
--
-- Each change of layout starts a new generation. Histories record the
-- generation that last wrote them; one of an older generation is sealed
-- and starts afresh when next opened (history.lua): while another layout
-- was in use, its payments may have gone to other keys.
--
-- KEYS[1]      claim:       string, the separator the running nodes use ('' for none)
-- KEYS[2]      generations: hash { separator (the last claimed), gen (its generation) }
-- ARGV[1]      separator    this node's ('' for none)
-- ARGV[2]      ttl_ms       how long a claim lasts without renewal
--
-- Returns { 1, gen } when claimed (or renewed), else { 0, the other layout's separator }.
local claim, generations = KEYS[1], KEYS[2]
local separator, ttl = ARGV[1], ARGV[2]
local current = redis.call('GET', claim)
if current and current ~= separator then
  return { 0, current }
end
redis.call('SET', claim, separator, 'PX', ttl)
local g = redis.call('HMGET', generations, 'separator', 'gen')
local gen = tonumber(g[2]) or 1
if g[1] and g[1] ~= separator then
  gen = gen + 1
end
if g[1] ~= separator or not g[2] then
  redis.call('HSET', generations, 'separator', separator, 'gen', string.format('%d', gen))
end
return { 1, string.format('%d', gen) }
