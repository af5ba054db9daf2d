"""The Lua scripts of the Redis store: one atomic script per change of a job.

Keys (P is the store's prefix, E an endpoint; `{E}` is a Redis Cluster hash tag, so an
endpoint's keys share a slot):

    P:{E}:job:ID    HASH    the job: ep, own (owner), in (inputs, until it finishes), ih (their
                            sha1), ib (their bytes), st (status), v (version), att (attempts),
                            lid (lease id), wid (worker), cat/sat/fat (created, started,
                            finished ms), lexp (lease expiry ms), exp (forgotten at, ms),
                            pr (progress %), out (outputs JSON), err (error), sc (queue score)
    P:{E}:q         ZSET    queued ids by score: created ms * 1000 + a sequence number, so a
                            job handed back returns to its place near the front
    P:{E}:leases    ZSET    running ids by deadline: the lease's expiry or the job's timeout
    P:{E}:qb        STRING  bytes of inputs queued (max_queue_bytes)
    P:{E}:seq       STRING  the queue scores' sequence
    P:{E}:expiry    ZSET    finished ids by the time their result is forgotten
    P:{E}:stats     HASH    run_s, a moving average of a job's run time (Retry-After)
    P:{E}:sweep     STRING  the clock of the last sweep: N servers sweep once, not N times
    P:{E}:ev        channel: the changes of one script, a line "ID VERSION STATUS" each; a
                            job done with outputs of up to 4 KiB adds " ATTEMPTS CREATED STARTED
                            FINISHED OWNER OUTPUTS", so that waiters need not read it back;
                            servers publish "ID VERSION progress[ PREVIEWS]" after a progress
                            report (previews are never stored in Redis). JSON from orjson
                            holds no line breaks.
    P:{E}:wake      channel jobs were queued (their ids, a line each): one waiting worker
                            per job should claim
    P:id:ID         STRING  the job's endpoint (a job is found by its id alone)
    P:workers       ZSET    worker ids by the time they were last seen
    P:w:WORKER      HASH    own (key hash), types, addr, info, seen, done, failed, running
    P:rl:{E}:CLIENT STRING  a client's GCRA theoretical arrival time (the rate limit)

Every script starts with a `#!lua` line, so Redis (7.0 and later) checks before running it
whether it may: a Redis out of memory refuses a script that writes whole, never after some of
its writes. VIEW and STATS only read (`flags=no-writes`): they run on such a Redis, as reads of
the SQLite store go on while its disk is full.

Times come from the calling server's clock (ARGV), not Redis's TIME: the store's clock is
injected (tests run on a fake one), and servers sharing a Redis must agree on the time to well
under a lease (NTP does). A script touches keys it builds from the prefix and the job ids it
is given or pops, all in one endpoint's slot except P:id:ID and the worker keys; Redis Cluster
would need those moved into the slot (noted in the README).
"""

from __future__ import annotations

# Every script's first lines: `ms` writes a number of milliseconds as an integer string (some
# Redis versions write large Lua numbers as 1.7e+12).
_MS = """
local function ms(x) return string.format('%.0f', x) end
"""

# Shared by the scripts that finish, fail or requeue a job. `base` is "P:{E}:".
_HELPERS = _MS + """
-- The changes a script makes, one line each, published together when it ends (flush).
local events = {}
local function event(id, v, st)
  events[#events + 1] = id .. ' ' .. v .. ' ' .. st
end
local function flush(base)
  if #events > 0 then redis.call('PUBLISH', base .. 'ev', table.concat(events, '\\n')) end
end

local function worker_add(wp, wid, field, by)
  if wid and wid ~= '' and redis.call('EXISTS', wp .. wid) == 1 then
    redis.call('HINCRBY', wp .. wid, field, by)
  end
end

-- Ends a queued or running job as done, failed or canceled; its result is kept ttl_ms.
local function finish(base, idp, wp, id, st, now, ttl_ms, field, value)
  local key = base .. 'job:' .. id
  local f = redis.call('HMGET', key, 'st', 'ib', 'wid', 'sat')
  if f[1] == 'queued' then
    redis.call('ZREM', base .. 'q', id)
    redis.call('DECRBY', base .. 'qb', f[2])
  end
  redis.call('ZREM', base .. 'leases', id)
  redis.call('HSET', key, 'st', st, 'fat', ms(now), 'exp', ms(now + ttl_ms), field, value)
  redis.call('HDEL', key, 'in')
  if st == 'done' then redis.call('HSET', key, 'pr', 100) end
  redis.call('ZADD', base .. 'expiry', now + ttl_ms, id)
  -- A backstop: the sweeper forgets the job first, and its files with it.
  redis.call('PEXPIRE', key, ttl_ms + 3600000)
  redis.call('PEXPIRE', idp .. id, ttl_ms + 3600000)
  local v = redis.call('HINCRBY', key, 'v', 1)
  if st == 'done' and #value <= 4096 then
    -- The whole finished job, for the servers waiting on it to answer without reading it.
    local g = redis.call('HMGET', key, 'att', 'cat', 'sat', 'own')
    event(id, v, 'done ' .. g[1] .. ' ' .. g[2] .. ' ' .. (g[3] or '-') .. ' ' .. ms(now) ..
          ' ' .. g[4] .. ' ' .. value)
  else
    event(id, v, st)
  end
  if f[1] == 'running' then
    worker_add(wp, f[3], 'running', -1)
    if st == 'done' then
      worker_add(wp, f[3], 'done', 1)
      local run_s = (now - tonumber(f[4])) / 1000
      local avg = tonumber(redis.call('HGET', base .. 'stats', 'run_s') or run_s)
      redis.call('HSET', base .. 'stats', 'run_s', 0.9 * avg + 0.1 * run_s)
    elseif st == 'failed' then
      worker_add(wp, f[3], 'failed', 1)
    end
  end
end

-- Puts a running job back in its queue, at its old place; `attempts` as given.
local function requeue(base, wp, id, attempts)
  local key = base .. 'job:' .. id
  local f = redis.call('HMGET', key, 'sc', 'ib', 'wid')
  redis.call('ZREM', base .. 'leases', id)
  redis.call('ZADD', base .. 'q', f[1], id)
  redis.call('INCRBY', base .. 'qb', f[2])
  redis.call('HSET', key, 'st', 'queued', 'att', attempts, 'pr', 0)
  event(id, redis.call('HINCRBY', key, 'v', 1), 'queued')
  redis.call('PUBLISH', base .. 'wake', id)
  worker_add(wp, f[3], 'running', -1)
end
"""

# Leases up to `count` jobs off the front of the endpoint's queue to worker `wid`; publishes
# their change; returns {{id, lease id, attempt, lease expiry, inputs}, ...} and the jobs left
# in the queue (none: the server knows it empty, and its next poll waits without a claim).
_TAKE = """
local function take(base, wp, now_s, lease_ms, timeout_ms, wid, count, nonce)
  local now = tonumber(now_s)
  local popped = redis.call('ZPOPMIN', base .. 'q', count)
  local out, events = {}, {}
  for i = 1, #popped, 2 do
    local id = popped[i]
    local key = base .. 'job:' .. id
    local f = redis.call('HMGET', key, 'st', 'in', 'ib')
    if f[1] == 'queued' then  -- (an id whose job is gone or changed is dropped from the queue)
      local lid = string.sub(redis.sha1hex(nonce .. id), 1, 16)
      local att = redis.call('HINCRBY', key, 'att', 1)
      redis.call('HSET', key, 'st', 'running', 'lid', lid, 'wid', wid, 'sat', now_s,
                 'lexp', ms(now + lease_ms))
      redis.call('DECRBY', base .. 'qb', f[3])
      redis.call('ZADD', base .. 'leases', ms(now + math.min(lease_ms, timeout_ms)), id)
      events[#events + 1] = id .. ' ' .. redis.call('HINCRBY', key, 'v', 1) .. ' running'
      out[#out + 1] = {id, lid, att, ms(now + lease_ms), f[2]}
    end
  end
  if #events > 0 then redis.call('PUBLISH', base .. 'ev', table.concat(events, '\\n')) end
  if #out > 0 and redis.call('EXISTS', wp .. wid) == 1 then
    redis.call('HINCRBY', wp .. wid, 'running', #out)
  end
  return out, redis.call('ZCARD', base .. 'q')
end
"""

# The submits a server makes in one turn of its event loop, to one endpoint, and when one of its
# workers is waiting for that endpoint, the lease of the jobs it can take: in one script, the
# jobs go to the worker in the change that queues them (no claim, no wake in between).
# ARGV: base, id key prefix, endpoint, max_queue_length, max_queue_bytes, worker key prefix,
# now, lease_ms, job_timeout_ms, the waiting worker ('' for none), how many jobs it takes, a
# nonce, then per job: id, owner, inputs, its submit time.
# -> {one answer per job: {'created', position} | {'exists'} | {'conflict', what} |
# {'full', what}, the jobs the worker took and the jobs left queued (as CLAIM's; -1 when it
# took none)}. The ids left queued are published together, a line each, on the wake channel.
SUBMIT = "#!lua\n" + _MS + _TAKE + """
local base, idp, ep = ARGV[1], ARGV[2], ARGV[3]
local max_len, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local q = base .. 'q'
local out, queued = {}, {}
for i = 13, #ARGV, 4 do
  local id, own, inputs, now = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = base .. 'job:' .. id
  local ih = redis.sha1hex(inputs)
  local known = redis.call('GET', idp .. id)
  if known then  -- a repeat: the same job, or a conflict
    local f = redis.call('HMGET', key, 'own', 'ih')
    if known ~= ep then out[#out + 1] = {'conflict', 'endpoint'}
    elseif f[1] ~= own then out[#out + 1] = {'conflict', 'owner'}
    elseif f[2] ~= ih then out[#out + 1] = {'conflict', 'inputs'}
    else out[#out + 1] = {'exists'} end
  elseif redis.call('ZCARD', q) >= max_len then out[#out + 1] = {'full', 'length'}
  elseif tonumber(redis.call('GET', base .. 'qb') or '0') + #inputs > max_bytes then
    out[#out + 1] = {'full', 'bytes'}
  else
    local score = ms(tonumber(now) * 1000 + redis.call('INCR', base .. 'seq') % 1000)
    redis.call('HSET', key, 'ep', ep, 'own', own, 'in', inputs, 'ih', ih, 'ib', #inputs,
               'st', 'queued', 'v', 1, 'att', 0, 'cat', now, 'sc', score, 'pr', 0)
    redis.call('SET', idp .. id, ep)
    redis.call('ZADD', q, score, id)
    redis.call('INCRBY', base .. 'qb', #inputs)
    queued[#queued + 1] = id
    out[#out + 1] = {'created', redis.call('ZRANK', q, id)}
  end
end
local taken, left = {}, -1
if ARGV[10] ~= '' and #queued > 0 then
  taken, left = take(base, ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10],
               tonumber(ARGV[11]), ARGV[12])
  local gone = {}
  for _, job in ipairs(taken) do gone[job[1]] = true end
  local left = {}
  for _, id in ipairs(queued) do if not gone[id] then left[#left + 1] = id end end
  queued = left
end
if #queued > 0 then redis.call('PUBLISH', base .. 'wake', table.concat(queued, '\\n')) end
return {out, taken, left}
"""

# ARGV: base, worker key prefix, now, lease_ms, job_timeout_ms, worker id, how many jobs,
# a random nonce (the lease ids are its hash with each job's id).
# -> {{{id, lease id, attempt, lease expiry, inputs}, ...}, the jobs left queued}
CLAIM = "#!lua\n" + _MS + _TAKE + """
return {take(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6],
             tonumber(ARGV[7]), ARGV[8])}
"""

# ARGV: base, now, lease_ms, job_timeout_ms, then per report: id, lease id, progress ('' for
# none). -> one answer per report: 'ok VERSION', 'unknown', 'lost', 'canceled' or
# 'finished STATUS'. The server then publishes the change itself, with the previews: a PUBLISH
# outside a script is not written to the append-only file.
PROGRESS = "#!lua\n" + _MS + """
local base, now = ARGV[1], tonumber(ARGV[2])
local lease_ms, timeout_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 3 do
  local id, lid, pr = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = base .. 'job:' .. id
  local f = redis.call('HMGET', key, 'st', 'lid', 'ib', 'sat')
  if not f[1] then out[#out + 1] = 'unknown'
  elseif f[2] ~= lid then out[#out + 1] = 'lost'
  elseif f[1] == 'canceled' then out[#out + 1] = 'canceled'
  elseif f[1] ~= 'running' and f[1] ~= 'queued' then out[#out + 1] = 'finished ' .. f[1]
  else
    if f[1] == 'queued' then  -- its lease lapsed and nobody took it: the worker resumes it
      redis.call('ZREM', base .. 'q', id)
      redis.call('DECRBY', base .. 'qb', f[3])
      redis.call('HSET', key, 'st', 'running')
    end
    redis.call('HSET', key, 'lexp', ms(now + lease_ms))
    redis.call('ZADD', base .. 'leases', ms(math.min(now + lease_ms, tonumber(f[4]) + timeout_ms)),
               id)
    if pr ~= '' then redis.call('HSET', key, 'pr', pr) end
    out[#out + 1] = 'ok ' .. redis.call('HINCRBY', key, 'v', 1)
  end
end
return out
"""

# Records worker results: ARGV from `first` on, per report: id, lease id, kind ('done', 'failed'
# or 'release'), payload (outputs JSON, error text or ''); publishes the changes.
# -> one answer per report: {'ok'} (a repeat, or nothing to hand back), {'ok', 'requeued'} (handed
# back), {'ok', STATUS, CREATED, STARTED} (finished now: its times in ms, for the metrics;
# STARTED '' if it never started), {'unknown'}, {'lost'}, {'canceled'} or
# {'finished', STATUS, ERROR}.
_RECORD = """
local function record(base, idp, wp, now, ttl_ms, first)
  local out = {}
  for i = first, #ARGV, 4 do
    local id, lid, kind, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local key = base .. 'job:' .. id
    local f = redis.call('HMGET', key, 'st', 'lid', 'out', 'err', 'att', 'cat', 'sat')
    local st = f[1]
    if not st then out[#out + 1] = {'unknown'}
    elseif f[2] ~= lid then out[#out + 1] = {'lost'}
    elseif st == 'canceled' then out[#out + 1] = {'canceled'}
    elseif st == 'done' or st == 'failed' then  -- a repeat of the result taken is fine
      if kind == st and (kind == 'done' and f[3] == payload or kind == 'failed' and f[4] == payload)
      then out[#out + 1] = {'ok'}
      else out[#out + 1] = {'finished', st, f[4] or ''} end
    elseif kind == 'release' then
      -- (a queued one is back already: its lease expired and that attempt counted)
      if st == 'running' then
        requeue(base, wp, id, math.max(0, tonumber(f[5]) - 1))
        out[#out + 1] = {'ok', 'requeued'}
      else out[#out + 1] = {'ok'} end
    else  -- (a queued job's lease lapsed but nobody took it: the result counts)
      finish(base, idp, wp, id, kind, now, ttl_ms, kind == 'done' and 'out' or 'err', payload)
      out[#out + 1] = {'ok', kind, f[6] or '0', f[7] or ''}
    end
  end
  flush(base)
  return out
end
"""

# ARGV: base, id key prefix, worker key prefix, now, result_ttl_ms, then the reports (see
# _RECORD). -> their answers.
RESULTS = "#!lua\n" + _HELPERS + _RECORD + """
return record(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), 6)
"""

# A worker's results and its next claim, in one script (its results post carries a poll):
# ARGV: base, id key prefix, worker key prefix, now, result_ttl_ms, lease_ms, job_timeout_ms,
# worker id, how many jobs, a nonce, then the reports (see _RECORD).
# -> {the reports' answers, the jobs taken (as CLAIM's), the jobs left queued}
RESULTS_CLAIM = "#!lua\n" + _HELPERS + _TAKE + _RECORD + """
local out = record(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), 11)
local taken, left = take(ARGV[1], ARGV[3], ARGV[4], tonumber(ARGV[6]), tonumber(ARGV[7]),
                         ARGV[8], tonumber(ARGV[9]), ARGV[10])
return {out, taken, left}
"""

# ARGV: base, id key prefix, worker key prefix, now, result_ttl_ms, id.
# -> 'unknown' | 'canceled' | the status it had (left as it was).
CANCEL = "#!lua\n" + _HELPERS + """
local base, idp, wp, now, ttl_ms, id = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), ARGV[6]
local st = redis.call('HGET', base .. 'job:' .. id, 'st')
if not st then return 'unknown' end
if st ~= 'queued' and st ~= 'running' then return st end
finish(base, idp, wp, id, 'canceled', now, ttl_ms, 'err', 'canceled by the client')
flush(base)
return 'canceled'
"""

# ARGV: base, id key prefix, worker key prefix, now, result_ttl_ms, job_timeout_ms,
# max_attempts, sweep_interval_ms, batch limit, the timeout's error, 'more' for the next batch
# of a sweep under way (else '').
# -> {{'requeued', id, worker, attempts} | {'failed', id, error}, ...}, {forgotten ids}, the
# entries looked at (a full batch: call again with 'more'); or false when another server swept
# this endpoint within sweep_interval_ms.
SWEEP = "#!lua\n" + _HELPERS + """
local base, idp, wp, now, ttl_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local timeout_ms, max_attempts = tonumber(ARGV[6]), tonumber(ARGV[7])
local interval_ms, limit, timeout_error = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
if ARGV[11] ~= 'more' then  -- (the next batches of a sweep under way skip the lock)
  local last = tonumber(redis.call('GET', base .. 'sweep') or '0')
  if now >= last and now - last < interval_ms then return false end
  redis.call('SET', base .. 'sweep', ARGV[4])
end
local changed = {}
local due = redis.call('ZRANGEBYSCORE', base .. 'leases', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(due) do
  local f = redis.call('HMGET', base .. 'job:' .. id, 'st', 'lexp', 'sat', 'att', 'wid')
  if f[1] ~= 'running' then
    redis.call('ZREM', base .. 'leases', id)
  elseif now - tonumber(f[3]) > timeout_ms then
    finish(base, idp, wp, id, 'failed', now, ttl_ms, 'err', timeout_error)
    changed[#changed + 1] = {'failed', id, timeout_error}
  elseif now > tonumber(f[2]) then
    if tonumber(f[4]) >= max_attempts then
      local why = 'worker ' .. f[5] .. ' stopped reporting and the lease expired ' .. f[4] ..
        ' times (max_attempts = ' .. max_attempts .. ')'
      finish(base, idp, wp, id, 'failed', now, ttl_ms, 'err', why)
      changed[#changed + 1] = {'failed', id, why}
    else
      requeue(base, wp, id, f[4])
      changed[#changed + 1] = {'requeued', id, f[5], f[4]}
    end
  else  -- renewed since: its deadline moved
    redis.call('ZADD', base .. 'leases', ms(math.min(tonumber(f[2]), tonumber(f[3]) + timeout_ms)),
               id)
  end
end
local gone = {}
local expired = redis.call('ZRANGEBYSCORE', base .. 'expiry', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  redis.call('ZREM', base .. 'expiry', id)
  local f = redis.call('HMGET', base .. 'job:' .. id, 'st', 'exp')
  local finished = f[1] == 'done' or f[1] == 'failed' or f[1] == 'canceled'
  if finished and tonumber(f[2]) > now then  -- (a later result of the same id: not yet)
    redis.call('ZADD', base .. 'expiry', f[2], id)
  elseif finished or not f[1] then  -- (no job: the backstop expired it; its files still go)
    redis.call('DEL', base .. 'job:' .. id, idp .. id)
    gone[#gone + 1] = id
  end  -- (else a new job of the same id, after this one was forgotten: left alone)
end
flush(base)
return {changed, gone, math.max(#due, #expired)}
"""

# ARGV: prefix ("P:"), id. -> {endpoint, {own, st, v, pr, out, err, att, cat, sat, fat},
# queue position or false}; nil when the job is unknown.
VIEW = """#!lua flags=no-writes
local p, id = ARGV[1], ARGV[2]
local ep = redis.call('GET', p .. 'id:' .. id)
if not ep then return nil end
local base = p .. '{' .. ep .. '}:'
local f = redis.call('HMGET', base .. 'job:' .. id, 'own', 'st', 'v', 'pr', 'out', 'err', 'att',
                     'cat', 'sat', 'fat')
if not f[2] then return nil end
local st = f[2]
local rank = false
if st == 'queued' then rank = redis.call('ZRANK', base .. 'q', id) end
return {ep, f, rank}
"""

# ARGV: prefix ("P:"), now, unseen cutoff (ms), endpoints... -> {{queued, queued bytes,
# running} per endpoint}, {{id, types, addr, info, seen, done, failed, running} per worker};
# workers unseen since the cutoff are left out.
STATS = """#!lua flags=no-writes
local p = ARGV[1]
local queues = {}
for i = 4, #ARGV do
  local base = p .. '{' .. ARGV[i] .. '}:'
  queues[#queues + 1] = {redis.call('ZCARD', base .. 'q'), redis.call('GET', base .. 'qb') or 0,
                         redis.call('ZCARD', base .. 'leases')}
end
local workers = {}
for _, wid in ipairs(redis.call('ZRANGEBYSCORE', p .. 'workers', ARGV[3], '+inf')) do
  local f = redis.call('HMGET', p .. 'w:' .. wid, 'types', 'addr', 'info', 'seen', 'done',
                       'failed', 'running')
  if f[1] then workers[#workers + 1] = {wid, f[1], f[2], f[3], f[4], f[5] or 0, f[6] or 0,
                                        f[7] or 0} end
end
return {queues, workers}
"""

# ARGV: prefix ("P:"), worker id, key hash -> 1 when it left, 0 when unknown or another key's.
GOODBYE = """#!lua
local key = ARGV[1] .. 'w:' .. ARGV[2]
if redis.call('HGET', key, 'own') ~= ARGV[3] then return 0 end
redis.call('DEL', key)
redis.call('ZREM', ARGV[1] .. 'workers', ARGV[2])
return 1
"""

# ARGV: prefix ("P:"), cutoff (ms). -> the ids of workers unseen since the cutoff, removed.
FORGET_WORKERS = """#!lua
local gone = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'workers', '-inf', '(' .. ARGV[2])
for _, wid in ipairs(gone) do
  redis.call('DEL', ARGV[1] .. 'w:' .. wid)
  redis.call('ZREM', ARGV[1] .. 'workers', wid)
end
return gone
"""

# GCRA (a token bucket of `burst` refilled at 1/interval): ARGV: key, now, interval_ms,
# burst. -> 0 when allowed, else the ms until a submission would be.
RATE_LIMIT = """#!lua
local now, interval, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = math.max(tonumber(redis.call('GET', ARGV[1]) or '0'), now)
local allowed_at = tat - (burst - 1) * interval
if now < allowed_at then return math.ceil(allowed_at - now) end
redis.call('SET', ARGV[1], tat + interval, 'PX', math.ceil(tat + interval - now))
return 0
"""
