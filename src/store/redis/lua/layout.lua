-- Claims the key layout for this node's --stream-separator (see
-- src/store/redis/keys.rs): nodes with different separators would keep a
-- trackingId of an account in two histories at once (two key layouts),
-- each issuing its own ids. Each node renews its claim every second (with
-- the keep-alive ping) and gives it back when it stops; a claim not renewed
-- for ttl_ms lapses (a node that died). A node with another separator is
-- refused while any other node's claim is live: a layout changes only once
-- every node of the old one has stopped.
--
-- Each change of layout starts a new generation. Histories record the
-- generation that last wrote them; one of an older generation is sealed
-- and starts afresh when next opened (history.lua): while another layout
-- was in use, its payments may have gone to other keys.
--
-- KEYS[1]      claims:      hash { separator (the layout claimed; '' for none), n:<node> = deadline ms, ... }
-- KEYS[2]      generations: hash { separator (the last claimed), gen (its generation) }
-- ARGV[1]      separator    this node's ('' for none)
-- ARGV[2]      ttl_ms       how long a claim lasts without renewal
-- ARGV[3]      node         this node's id
-- ARGV[4]      op           'claim', or 'release' (the node stops)
--
-- Returns { 1, gen } when claimed (or renewed, or released), else
-- { 0, the other layout's separator }.
local claims, generations = KEYS[1], KEYS[2]
local separator, ttl, node, op = ARGV[1], tonumber(ARGV[2]), 'n:' .. ARGV[3], ARGV[4]
local function fmt(n) return string.format('%d', n) end

if op == 'release' then
  redis.call('HDEL', claims, node)
  return { 1, '0' }
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = redis.call('HGETALL', claims)
local current, others = nil, false
for i = 1, #fields, 2 do
  local field, value = fields[i], fields[i + 1]
  if field == 'separator' then
    current = value
  elseif field ~= node then
    if tonumber(value) < now then
      redis.call('HDEL', claims, field)
    else
      others = true
    end
  end
end
if current and current ~= separator and others then
  return { 0, current }
end
redis.call('HSET', claims, 'separator', separator, node, fmt(now + ttl))
redis.call('PEXPIRE', claims, ttl)

local g = redis.call('HMGET', generations, 'separator', 'gen')
local gen = tonumber(g[2]) or 1
if g[1] and g[1] ~= separator then
  gen = gen + 1
end
if g[1] ~= separator or not g[2] then
  redis.call('HSET', generations, 'separator', separator, 'gen', fmt(gen))
end
return { 1, fmt(gen) }
