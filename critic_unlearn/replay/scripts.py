"""The Lua scripts that make insert, sample, drop, priority updates and every rate-limiter
decision atomic.

Redis runs a script to the end without interleaving other commands, but does not roll back the
writes a failing script already made. So every script reads and checks first and writes last.
Payloads never pass through Lua (copying megabytes through the Lua VM costs 2-3x a plain
SET/GET): an insert is MULTI { SET stage:<uid> payload; EVALSHA INSERT } EXEC (an actor's batch:
one such pair per record in one MULTI), and INSERT RENAMEs the staged payload into its ring slot
(O(1), no copy); a sample is SAMPLE (pick records,
return their metadata), then one pipeline of HGET meta id, GET slot, HGET meta id per record: ids
are never reused, so equal ids around the GET prove the payload belongs to that record.
The writing script carries a `#!lua` shebang without `allow-oom`, and Redis refuses to queue
the SET (or anything) in MULTI once it is out of memory, so a full server refuses an insert
whole (a clear OOM error), never half applies it. Sampling and priority
updates may run when Redis is full (`allow-oom`): they only bump small counters.

Keys are built inside the scripts from the shard prefix (ARGV[1]); KEYS[1] (the head key) names
the hash slot, which the `{ns:s}` hash tag shares with every other key of the shard.
"""

from __future__ import annotations

# Reverb's SampleToInsertRatio: diff = inserts * spi - samples must stay within
# [spi * min_size - error_buffer, spi * min_size + error_buffer] once min_size records exist.
# Every limiter decision (insert, sample, room for a batch, the stale release) is made here and
# nowhere else; the Python side only passes the parameters and reads the answer.
_LIMITER = """
local function rl_counts(rl)
  local c = redis.call('HMGET', rl, 'inserts', 'samples')
  return tonumber(c[1] or 0), tonumber(c[2] or 0)
end
-- may k more records go in now (k = 1: one insert)?
local function rl_can_insert(rl, size, k, spi, min_size, eb)
  if size + k <= min_size then return true end
  local ins, smp = rl_counts(rl)
  return (ins + k) * spi - smp <= spi * min_size + eb
end
local function rl_grant(rl, size, n, spi, min_size, eb)
  if size < min_size then return 0 end
  local ins, smp = rl_counts(rl)
  local room = ins * spi - smp - (spi * min_size - eb)
  return math.max(0, math.min(n, math.floor(room + 1e-9)))
end
-- a batch of n waits for room for min(n, the band's width 2 eb / spi) records, at least 1:
-- a batch wider than the band would never fit
local function rl_batch_need(n, spi, eb)
  return math.min(n, math.max(1, math.floor(2 * eb / spi)))
end
-- the deadlock breaker: when samples would be granted but no record is fresh enough to draw,
-- and an actor's batch of n is refused (the rule it waits on, rl_batch_need), count the stored
-- records as consumed (diff goes to its bottom, where a batch fits again).
-- -> nil (nothing to release) or inserts, samples before, samples after
local function rl_release_stale(rl, size, n, spi, min_size, eb)
  if rl_grant(rl, size, 1, spi, min_size, eb) < 1 then return nil end
  local need = rl_batch_need(n, spi, eb)
  if rl_can_insert(rl, size, need, spi, min_size, eb) then return nil end
  local ins, smp = rl_counts(rl)
  local to = math.ceil(ins * spi - (spi * min_size - eb))
  redis.call('HSET', rl, 'samples', to)
  return ins, smp, to
end
"""

# Which slots a draw may pick: in 'recent' mode the newest `window` inserts of version >= minv,
# otherwise every record of version >= minv.
_CANDIDATES = """
local function recent_slots(p, cap, window, minv)
  local ver = p .. 'ver'
  local head = tonumber(redis.call('GET', p .. 'head') or 0)
  local w = math.min(window, cap, head)
  local cand = {}
  for id = head - w + 1, head do
    local s = (id - 1) % cap
    local v = redis.call('ZSCORE', ver, s)
    if v and tonumber(v) >= tonumber(minv) then cand[#cand + 1] = s end
  end
  return cand
end
local function drawable(p, cap, minv, mode, window)
  if mode == 'recent' then return #recent_slots(p, cap, window, minv) end
  return redis.call('ZCOUNT', p .. 'ver', minv, '+inf')
end
"""


# ARGV: prefix, capacity, payload bytes, uid, version, reward, role, actor, priority ('' = max so
#       far), use_rl (0/1), spi, min_size, error_buffer; the payload waits in key stage:<uid>
# -> {status, id, slot, evicted_id}; status 'ok' | 'dup' (uid already stored) | 'blocked'
INSERT = (
    "#!lua\n"
    + _LIMITER
    + """
local p = ARGV[1]
local cap = tonumber(ARGV[2])
local nbytes = tonumber(ARGV[3])
local stage = p .. 'stage:' .. ARGV[4]
local known = redis.call('HGET', p .. 'uid', ARGV[4])
if known then
  redis.call('DEL', stage)
  return {'dup', tonumber(redis.call('HGET', p .. 'meta:' .. known, 'id')), tonumber(known), 0}
end
local use_rl = ARGV[10] == '1'
if use_rl then
  local size = redis.call('ZCARD', p .. 'ver')
  if not rl_can_insert(p .. 'rl', size, 1, tonumber(ARGV[11]), tonumber(ARGV[12]),
                       tonumber(ARGV[13])) then
    redis.call('DEL', stage)
    return {'blocked', 0, 0, 0}
  end
end
local id = tonumber(redis.call('GET', p .. 'head') or 0) + 1
local i = (id - 1) % cap
local mk = p .. 'meta:' .. i
local old = redis.call('HMGET', mk, 'id', 'uid')
local prio = ARGV[9]
if prio == '' then prio = redis.call('HGET', p .. 'stats', 'max_priority') or '1' end
-- writes only from here on
redis.call('SET', p .. 'head', id)
if old[1] then
  redis.call('HDEL', p .. 'uid', old[2])
  redis.call('HINCRBY', p .. 'stats', 'evictions', 1)
end
redis.call('RENAME', stage, p .. 'slot:' .. i)
redis.call('PERSIST', p .. 'slot:' .. i)
redis.call('DEL', mk)
redis.call('HSET', mk, 'id', id, 'uid', ARGV[4], 'version', ARGV[5], 'reward', ARGV[6],
           'role', ARGV[7], 'actor', ARGV[8], 'times_sampled', 0, 'priority', prio,
           'bytes', nbytes)
redis.call('ZADD', p .. 'ver', ARGV[5], i)
redis.call('ZADD', p .. 'prio', prio, i)
redis.call('HSET', p .. 'uid', ARGV[4], i)
redis.call('HINCRBY', p .. 'stats', 'bytes_in', nbytes)
if use_rl then redis.call('HINCRBY', p .. 'rl', 'inserts', 1) end
return {'ok', id, i, old[1] and tonumber(old[1]) or 0}
"""
)

# ARGV: prefix, capacity, n, min_version, mode (uniform|recent|prioritized), recent_window,
#       priority_exponent, seed, use_rl (0/1), spi, min_size, error_buffer
# -> {'blocked'|'stale', size, newest_version} or
#    {'ok', count, then per draw: slot, id, uid, version, reward, role, actor, times_sampled,
#     priority, prob}  (payloads are read next, checked by id; see Shard.sample)
# Draws are with replacement (as in Reverb); each bumps times_sampled.
SAMPLE = (
    "#!lua flags=allow-oom\n"
    + _LIMITER
    + _CANDIDATES
    + """
local p = ARGV[1]
local cap = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local minv = ARGV[4]
local mode = ARGV[5]
math.randomseed(tonumber(ARGV[8]))
local ver = p .. 'ver'
local size = redis.call('ZCARD', ver)
local top = redis.call('ZRANGE', ver, 0, 0, 'REV', 'WITHSCORES')
local newest = top[2] or '-1'
local g = n
if ARGV[9] == '1' then
  g = rl_grant(p .. 'rl', size, n, tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]))
  if g == 0 then return {'blocked', size, newest} end
end
-- candidates: `cand` slots with cumulative weights `cum` (nil = uniform over cand)
local cand, cum, total = {}, nil, 0
if mode == 'uniform' then
  local m = redis.call('ZCOUNT', ver, minv, '+inf')
  if m == 0 then return {'stale', size, newest} end
  total = m
elseif mode == 'recent' then
  cand = recent_slots(p, cap, tonumber(ARGV[6]), minv)
  total = #cand
  if total == 0 then return {'stale', size, newest} end
else
  cand = redis.call('ZRANGE', ver, minv, '+inf', 'BYSCORE')
  if #cand == 0 then return {'stale', size, newest} end
  local alpha = tonumber(ARGV[7])
  cum = {}
  for lo = 1, #cand, 1000 do
    local hi = math.min(lo + 999, #cand)
    local pr = redis.call('ZMSCORE', p .. 'prio', unpack(cand, lo, hi))
    for k = lo, hi do
      total = total + math.max(tonumber(pr[k - lo + 1] or 0), 0) ^ alpha
      cum[k] = total
    end
  end
  if total <= 0 then cum = nil; total = #cand end
end
local out = {'ok', g}
for _ = 1, g do
  local s, prob
  if mode == 'uniform' then
    local r = size - total + math.random(0, total - 1)
    s = redis.call('ZRANGE', ver, r, r)[1]
    prob = 1 / total
  elseif cum == nil then
    s = cand[math.random(1, #cand)]
    prob = 1 / #cand
  else
    local u, lo, hi = math.random() * total, 1, #cand
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cum[mid] > u then hi = mid else lo = mid + 1 end
    end
    s = cand[lo]
    prob = (cum[lo] - (cum[lo - 1] or 0)) / total
  end
  local mk = p .. 'meta:' .. s
  redis.call('HINCRBY', mk, 'times_sampled', 1)
  local m = redis.call('HMGET', mk, 'id', 'uid', 'version', 'reward', 'role', 'actor',
                       'times_sampled', 'priority')
  out[#out + 1] = tostring(s)
  for k = 1, #m do out[#out + 1] = m[k] end
  out[#out + 1] = tostring(prob)
end
if ARGV[9] == '1' then redis.call('HINCRBY', p .. 'rl', 'samples', g) end
return out
"""
)

RECORD_FIELDS = 10  # values per draw in SAMPLE's reply

# ARGV: prefix, slot, id -> 1 if the record (still) in `slot` was `id` and is now removed, else 0
DROP = """#!lua flags=allow-oom
local p, s, id = ARGV[1], ARGV[2], ARGV[3]
local mk = p .. 'meta:' .. s
local m = redis.call('HMGET', mk, 'id', 'uid')
if m[1] ~= id then return 0 end
redis.call('DEL', mk, p .. 'slot:' .. s)
redis.call('ZREM', p .. 'ver', s)
redis.call('ZREM', p .. 'prio', s)
redis.call('HDEL', p .. 'uid', m[2])
redis.call('HINCRBY', p .. 'stats', 'corrupt', 1)
return 1
"""

# ARGV: prefix, then (slot, id, priority) triples -> number of records updated (an overwritten
# slot is skipped: its priority belongs to the newer record)
UPDATE_PRIORITIES = """#!lua flags=allow-oom
local p = ARGV[1]
local top = tonumber(redis.call('HGET', p .. 'stats', 'max_priority') or 1)
local done = 0
for k = 2, #ARGV, 3 do
  local s, id, pr = ARGV[k], ARGV[k + 1], ARGV[k + 2]
  local mk = p .. 'meta:' .. s
  if redis.call('HGET', mk, 'id') == id then
    redis.call('HSET', mk, 'priority', pr)
    redis.call('ZADD', p .. 'prio', pr, s)
    if tonumber(pr) > top then top = tonumber(pr) end
    done = done + 1
  end
end
redis.call('HSET', p .. 'stats', 'max_priority', tostring(top))
return done
"""

# Standalone limiter on shard 0, used when the data lives on another shard.
# ARGV: kind (insert|sample|release), n, total_size, spi, min_size, error_buffer -> granted n
LIMIT = (
    "#!lua flags=allow-oom\n"
    + _LIMITER
    + """
local rl, kind, n, size = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local spi, min_size, eb = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if kind == 'release' then redis.call('HINCRBY', rl, 'samples', -n); return n end
if kind == 'insert' then
  if not rl_can_insert(rl, size, 1, spi, min_size, eb) then return 0 end
  redis.call('HINCRBY', rl, 'inserts', 1)
  return 1
end
local g = rl_grant(rl, size, n, spi, min_size, eb)
if g > 0 then redis.call('HINCRBY', rl, 'samples', g) end
return g
"""
)

# Room for a batch on the primary shard; only reads. The actor asks before it samples a batch,
# so trajectories are not held (and aged) while the learner moves on.
# ARGV: prefix, n, size of the other shards, spi, min_size, error_buffer -> 1 | 0
ROOM = (
    "#!lua flags=no-writes,allow-oom\n"
    + _LIMITER
    + """
local p = ARGV[1]
local size = redis.call('ZCARD', p .. 'ver') + tonumber(ARGV[3])
local spi, min_size, eb = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local need = rl_batch_need(tonumber(ARGV[2]), spi, eb)
if rl_can_insert(p .. 'rl', size, need, spi, min_size, eb) then return 1 end
return 0
"""
)

# What a shard holds and how much of it a draw at min_version could pick; only reads.
# ARGV: prefix, capacity, min_version, mode, recent_window -> {size, drawable}
CENSUS = (
    "#!lua flags=no-writes,allow-oom\n"
    + _CANDIDATES
    + """
local p = ARGV[1]
return {redis.call('ZCARD', p .. 'ver'),
        drawable(p, tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5]))}
"""
)

# The deadlock breaker on the primary shard: release only when nothing stored (here or on the
# other shards) can be drawn at min_version, the limiter would grant samples and refuses an
# actor's batch (ROOM's rule for a batch of n).
# ARGV: prefix, capacity, min_version, mode, recent_window, size and drawable of the other
#       shards, spi, min_size, error_buffer, n -> {0} or {1, size, inserts, samples, samples after}
RELEASE_STALE = (
    "#!lua flags=allow-oom\n"
    + _LIMITER
    + _CANDIDATES
    + """
local p = ARGV[1]
local size = redis.call('ZCARD', p .. 'ver') + tonumber(ARGV[6])
local fresh = drawable(p, tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5]))
if fresh + tonumber(ARGV[7]) > 0 then return {0} end
local ins, smp, to = rl_release_stale(p .. 'rl', size, tonumber(ARGV[11]), tonumber(ARGV[8]),
                                      tonumber(ARGV[9]), tonumber(ARGV[10]))
if ins == nil then return {0} end
return {1, size, ins, smp, to}
"""
)
