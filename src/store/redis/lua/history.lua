-- Shared by append.lua and read.lua: each script is this file followed by
-- its own body (see src/store/redis.rs). Redis runs a script atomically, so
-- nothing else touches a trackingId's keys while one runs.

-- Redis's clock in milliseconds: every node agrees on it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A number as Redis and the nodes write it: decimal digits, no exponent.
local function fmt(n)
  return string.format('%d', n)
end

-- The run id of this Redis process. It changes at every restart and on
-- failover to a replica, which is when acknowledged writes may have been
-- lost (data restored from a snapshot or an AOF older than the last write,
-- or an asynchronous replica behind its master).
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end

-- Drops events accepted at or before `cutoff` from the front of a stream.
local function trim(stream, cutoff)
  while true do
    local batch = redis.call('XRANGE', stream, '-', '+', 'COUNT', 100)
    if #batch == 0 then return end
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][2]) > cutoff then return end
      redis.call('XDEL', stream, entry[1])
    end
  end
end

-- Opens a trackingId's history: its epoch and last seq, or nil when it has
-- none. A history last written by another Redis process may have lost its
-- latest events, and with them the record of which ids were issued: it is
-- sealed, and a new, larger epoch begins with no event, so that no id is
-- ever issued twice and a since from before reads as truncated. Only the
-- Redis process decides this, never a client's since. So is a history last
-- written under another key-layout generation (`gen`, see layout.lua):
-- meanwhile its payments may have gone to its keys of another layout. A
-- meta without a generation was written before generations: the first.
local function open_history(meta, events, now, gen)
  local m = redis.call('HMGET', meta, 'epoch', 'seq', 'rid', 'gen')
  if not m[1] then return nil end
  local rid = run_id()
  if m[3] ~= rid or (m[4] or '1') ~= gen then
    local epoch = math.max(now, tonumber(m[1]) + 1)
    redis.call('DEL', events)
    redis.call('HSET', meta, 'epoch', fmt(epoch), 'seq', '0', 'rid', rid, 'gen', gen)
    return epoch, 0
  end
  return tonumber(m[1]), tonumber(m[2])
end
