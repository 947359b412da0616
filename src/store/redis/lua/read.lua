-- Reads a trackingId's retained events after a since.
--
-- KEYS[1]      meta    (see append.lua)
-- KEYS[2]      events
-- ARGV[1]      since_epoch     the since's epoch, '' for none
-- ARGV[2]      since_seq       the since's seq (decimal, may be huge)
-- ARGV[3]      limit           events wanted
-- ARGV[4]      history_ttl_ms
-- ARGV[5]      gen             the key-layout generation (layout.lua)
--
-- Returns { now } when there is no history, else
-- { now, epoch, last_seq, first_retained_seq, id, t, envelope, id, t, envelope, ... }
-- with up to limit + 1 events from where the read starts. Whether the since
-- is valid is decided by the caller from epoch, last and first.
local meta, events = KEYS[1], KEYS[2]
local since_epoch, since_seq = ARGV[1], tonumber(ARGV[2])
local limit, history_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local gen = ARGV[5]

local now = now_ms()
local epoch, last = open_history(meta, events, now, gen)
if not epoch then return { now } end
trim(events, now - history_ttl)
local first = last + 1
local head = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)
if #head > 0 then
  first = tonumber(string.match(head[1][1], '-(%d+)$'))
end
local out = { now, fmt(epoch), fmt(last), fmt(first) }
local start = '-'
if since_epoch == fmt(epoch) then
  -- A since at or beyond the last seq has nothing after it (beyond it is
  -- refused by the caller); compared as numbers before any arithmetic, so
  -- that a huge seq cannot overflow.
  if since_seq >= last then return out end
  start = fmt(epoch) .. '-' .. fmt(since_seq + 1)
end
for _, entry in ipairs(redis.call('XRANGE', events, start, '+', 'COUNT', limit + 1)) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2][2]
  out[#out + 1] = entry[2][4]
end
return out
