-- Appends one trackingId's payments and publishes each new one, atomically.
--
-- KEYS[1]      meta:   hash { epoch, seq (last issued), rid (run id of the Redis that wrote it) }
-- KEYS[2]      events: stream, ids <epoch>-<seq>, fields t (accepted ms), e (envelope)
-- KEYS[3..]    one dedupe key per payment, in payment order
-- ARGV[1]      max_events      events kept (MAXLEN)
-- ARGV[2]      history_ttl_ms  age after which an event is dropped
-- ARGV[3]      dedupe_ttl_ms   how long a dedupe key (and the meta) lives
-- ARGV[4]      publish         PUBLISH, or SPUBLISH on a Redis Cluster
-- ARGV[5]      channel         the trackingId's channel
-- ARGV[6..]    one payment `data` JSON per payment, in payment order
--
-- Returns { now, { id, 0, envelope } | { original id, 1 }, ... } in payment order.
--
-- Each new event is published as `<id> <accepted ms> <envelope>`: the nodes
-- take its id and time from there, never from the envelope's JSON.
--
-- Everything that can fail (a key of the wrong type) is read before the
-- first payment is written: a script that fails changes no payment.
local meta, events = KEYS[1], KEYS[2]
local max_events = ARGV[1]
local history_ttl = tonumber(ARGV[2])
local dedupe_ttl = tonumber(ARGV[3])
local publish, channel = ARGV[4], ARGV[5]
local FIRST = 6 -- ARGV index of the first payment; its dedupe key is KEYS[FIRST - 3]

local now = now_ms()
local epoch, seq = open_history(meta, events, now)
local originals = {}
for i = FIRST, #ARGV do
  originals[i] = redis.call('GET', KEYS[i - 3])
end
trim(events, now - history_ttl)

if not epoch then
  -- A history created afresh: a new epoch, and no entry of an older one.
  epoch, seq = now, 0
  redis.call('DEL', events)
  redis.call('HSET', meta, 'epoch', fmt(epoch), 'seq', '0', 'rid', run_id())
end

local out = { now }
local taken = {} -- dedupe keys stored by this call
for i = FIRST, #ARGV do
  local key = KEYS[i - 3]
  local original = originals[i] or taken[key]
  if original then
    out[#out + 1] = { original, 1 }
  else
    seq = seq + 1
    local id = fmt(epoch) .. '-' .. fmt(seq)
    local envelope = '{"type":"payment_notification","id":"' .. id .. '","seq":' ..
      fmt(seq) .. ',"data":' .. ARGV[i] .. ',"timestamp":' .. fmt(now) .. '}'
    redis.call('XADD', events, 'MAXLEN', max_events, id, 't', fmt(now), 'e', envelope)
    redis.call('SET', key, id, 'PX', dedupe_ttl)
    redis.call(publish, channel, id .. ' ' .. fmt(now) .. ' ' .. envelope)
    taken[key] = id
    out[#out + 1] = { id, 0, envelope }
  end
end
redis.call('HSET', meta, 'seq', fmt(seq))
redis.call('PEXPIRE', meta, dedupe_ttl)
redis.call('PEXPIRE', events, history_ttl)
return out
