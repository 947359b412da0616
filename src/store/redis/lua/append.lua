-- Appends one trackingId's payments and publishes each new one, atomically;
-- with an account stream, also stores and publishes each new one in it.
--
-- KEYS[1]      meta:   hash { epoch, seq (last issued), rid (run id of the Redis that wrote it) }
-- KEYS[2]      events: stream, ids <epoch>-<seq>, fields t (accepted ms), e (envelope)
-- KEYS[3..4]   with an account stream only: the stream's meta and events (same shapes)
-- KEYS[...]    then one dedupe key per payment, in payment order
-- ARGV[1]      max_events      events kept (MAXLEN)
-- ARGV[2]      history_ttl_ms  age after which an event is dropped
-- ARGV[3]      dedupe_ttl_ms   how long a dedupe key (and the meta) lives
-- ARGV[4]      publish         PUBLISH, or SPUBLISH on a Redis Cluster
-- ARGV[5]      channel         the trackingId's channel
-- ARGV[6]      stream          the stream's name as a JSON string, '' for none
-- ARGV[7]      stream_channel  the stream's channel
-- ARGV[8]      stream_max      events kept in the stream (MAXLEN)
-- ARGV[9]      gen             the key-layout generation (layout.lua)
-- ARGV[10..]   one payment `data` JSON per payment, in payment order
--
-- Returns { now, { id, 0, envelope } | { original id, 1 }, ... } in payment order
-- (the trackingId's ids: a stream's events are published, not returned).
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
local stream, stream_channel, stream_max = ARGV[6], ARGV[7], ARGV[8]
local has_stream = stream ~= ''
local smeta, sevents = KEYS[3], KEYS[4]
local gen = ARGV[9]
local FIRST = 10 -- ARGV index of the first payment
-- KEYS index of payment i's dedupe key (ARGV index i)
local shift = has_stream and 5 or 7
local function dedupe_key(i) return KEYS[i - shift] end

local now = now_ms()
local epoch, seq = open_history(meta, events, now, gen)
local sepoch, sseq
if has_stream then
  sepoch, sseq = open_history(smeta, sevents, now, gen)
end
local originals = {}
for i = FIRST, #ARGV do
  originals[i] = redis.call('GET', dedupe_key(i))
end
trim(events, now - history_ttl)
if has_stream then trim(sevents, now - history_ttl) end

-- A history created afresh: a new epoch, and no entry of an older one.
local function create(m, e)
  redis.call('DEL', e)
  redis.call('HSET', m, 'epoch', fmt(now), 'seq', '0', 'rid', run_id(), 'gen', gen)
  return now, 0
end
if not epoch then epoch, seq = create(meta, events) end
if has_stream and not sepoch then sepoch, sseq = create(smeta, sevents) end

local out = { now }
local taken = {} -- dedupe keys stored by this call
for i = FIRST, #ARGV do
  local key = dedupe_key(i)
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
    if has_stream then
      -- The same payment in its account's stream: the stream's own id and
      -- seq, its place in its trackingId's history under source.
      sseq = sseq + 1
      local sid = fmt(sepoch) .. '-' .. fmt(sseq)
      local senvelope = '{"type":"payment_notification","stream":' .. stream ..
        ',"id":"s' .. sid .. '","seq":' .. fmt(sseq) ..
        ',"source":{"id":"' .. id .. '","seq":' .. fmt(seq) ..
        '},"data":' .. ARGV[i] .. ',"timestamp":' .. fmt(now) .. '}'
      redis.call('XADD', sevents, 'MAXLEN', stream_max, sid, 't', fmt(now), 'e', senvelope)
      redis.call(publish, stream_channel, sid .. ' ' .. fmt(now) .. ' ' .. senvelope)
    end
  end
end
redis.call('HSET', meta, 'seq', fmt(seq))
redis.call('PEXPIRE', meta, dedupe_ttl)
redis.call('PEXPIRE', events, history_ttl)
if has_stream then
  redis.call('HSET', smeta, 'seq', fmt(sseq))
  redis.call('PEXPIRE', smeta, dedupe_ttl)
  redis.call('PEXPIRE', sevents, history_ttl)
end
return out
