"""The Redis job store's Lua scripts: the state changes that must be atomic (create, claim,
heartbeat, finish, cancel) and the indexing of data other releases wrote. Redis runs a script at a
time, so each is one step for every ingress replica."""

# Functions the scripts share. The keys they build from the prefix (ARGV): a job's hash 'job:<id>'
# and input 'input:<id>'; the queued ones of a service 'queued:<service>' and of a service and client
# 'queued:<service>:<client>', a client's queued ones 'client-queued:<client>' and all its jobs
# 'client-jobs:<client>'; the clients with queued jobs by turn 'turns', the services ever queued
# 'services', running jobs per service 'running-count'. Scripts that build keys run on one Redis (not
# a Redis Cluster).
HELPERS = """
local function queued_of(prefix, service, client) return prefix .. 'queued:' .. service .. ':' .. client end
local function unqueue(prefix, id, service, client)
  redis.call('ZREM', prefix .. 'queued', id)
  redis.call('ZREM', prefix .. 'queued:' .. service, id)
  redis.call('ZREM', queued_of(prefix, service, client), id)
  redis.call('ZREM', prefix .. 'client-queued:' .. client, id)
end
local function stop_running(prefix, id, service)
  redis.call('ZREM', prefix .. 'running', id)
  if redis.call('HINCRBY', prefix .. 'running-count', service, -1) < 0 then
    redis.call('HSET', prefix .. 'running-count', service, 0)
  end
end
"""
# ARGV: now, stale_before, owner, prefix, then (service, most running) pairs.
CLAIM = (
    HELPERS
    + """
local now, stale_before, owner, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local running, turns = prefix .. 'running', prefix .. 'turns'
for _, id in ipairs(redis.call('ZRANGEBYSCORE', running, '-inf', stale_before)) do
  local key = prefix .. 'job:' .. id
  if redis.call('HGET', key, 'cancel_requested') == '1' then
    stop_running(prefix, id, redis.call('HGET', key, 'service'))
    redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now)
    redis.call('DEL', prefix .. 'input:' .. id)
    redis.call('ZADD', prefix .. 'finished', now, id)
  else
    redis.call('HSET', key, 'owner', owner, 'heartbeat_at', now)
    redis.call('ZADD', running, now, id)
    return id
  end
end
local full = {}
for i = 5, #ARGV, 2 do
  if tonumber(redis.call('HGET', prefix .. 'running-count', ARGV[i]) or '0') >= tonumber(ARGV[i + 1]) then
    full[ARGV[i]] = true
  end
end
local services = redis.call('SMEMBERS', prefix .. 'services')
local function head_of(client)
  local chosen, oldest, chosen_service, waiting = nil, nil, nil, false
  for _, service in ipairs(services) do
    local head = redis.call('ZRANGE', queued_of(prefix, service, client), 0, 0, 'WITHSCORES')
    if head[1] then
      waiting = true
      if not full[service] and (oldest == nil or tonumber(head[2]) < oldest) then
        chosen, oldest, chosen_service = head[1], tonumber(head[2]), service
      end
    end
  end
  return chosen, chosen_service, waiting
end
for _, client in ipairs(redis.call('ZRANGE', turns, 0, -1)) do
  local chosen, chosen_service, waiting = head_of(client)
  -- An entry whose job is no longer queued: an older release claimed or cancelled it.
  while chosen and redis.call('HGET', prefix .. 'job:' .. chosen, 'status') ~= 'queued' do
    unqueue(prefix, chosen, chosen_service, client)
    chosen, chosen_service, waiting = head_of(client)
  end
  if chosen then
    local last = redis.call('ZRANGE', turns, -1, -1, 'WITHSCORES')
    redis.call('ZADD', turns, tonumber(last[2]) + 1, client)
    unqueue(prefix, chosen, chosen_service, client)
    local key = prefix .. 'job:' .. chosen
    redis.call('HSET', key, 'status', 'running', 'owner', owner, 'heartbeat_at', now)
    if redis.call('HGET', key, 'started_at') == '' then redis.call('HSET', key, 'started_at', now) end
    redis.call('ZADD', running, now, chosen)
    redis.call('HINCRBY', prefix .. 'running-count', chosen_service, 1)
    return chosen
  end
  if not waiting then redis.call('ZREM', turns, client) end
end
return false
"""
)
# KEYS: job, input. ARGV: prefix, max queued, max queued per client (0: no bound), id, created_at,
# service, client, input, then the job's fields as name, value pairs. Returns 1 (created), 2 (the id
# exists already), 0 (the queue is full) or 3 (the client's queue is full).
CREATE = (
    HELPERS
    + """
local prefix, id, created_at, service, client = ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if tonumber(ARGV[2]) > 0 and redis.call('ZCARD', prefix .. 'queued') >= tonumber(ARGV[2]) then return 0 end
local client_queued = redis.call('ZCARD', prefix .. 'client-queued:' .. client)
if tonumber(ARGV[3]) > 0 and client_queued >= tonumber(ARGV[3]) then return 3 end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('SET', KEYS[2], ARGV[8])
redis.call('ZADD', prefix .. 'jobs', created_at, id)
redis.call('ZADD', prefix .. 'client-jobs:' .. client, created_at, id)
redis.call('ZADD', prefix .. 'queued', created_at, id)
redis.call('ZADD', prefix .. 'queued:' .. service, created_at, id)
redis.call('ZADD', queued_of(prefix, service, client), created_at, id)
redis.call('ZADD', prefix .. 'client-queued:' .. client, created_at, id)
redis.call('ZADD', prefix .. 'turns', 'NX', 0, client)
redis.call('SADD', prefix .. 'services', service)
return 1
"""
)
# Data written before the per-client and per-service sets: indexed into them once. ARGV: prefix.
INDEX_OLDER_JOBS = """
local prefix = ARGV[1]
if redis.call('GET', prefix .. 'layout') == '2' then return 0 end
local jobs = redis.call('ZRANGE', prefix .. 'jobs', 0, -1, 'WITHSCORES')
for i = 1, #jobs, 2 do
  local id, created_at = jobs[i], jobs[i + 1]
  local key = prefix .. 'job:' .. id
  local service, client = redis.call('HGET', key, 'service'), redis.call('HGET', key, 'client') or ''
  local status = redis.call('HGET', key, 'status')
  redis.call('ZADD', prefix .. 'client-jobs:' .. client, created_at, id)
  if status == 'queued' then
    redis.call('ZADD', prefix .. 'queued:' .. service, created_at, id)
    redis.call('ZADD', prefix .. 'queued:' .. service .. ':' .. client, created_at, id)
    redis.call('ZADD', prefix .. 'client-queued:' .. client, created_at, id)
    redis.call('ZADD', prefix .. 'turns', 'NX', 0, client)
    redis.call('SADD', prefix .. 'services', service)
  elseif status == 'running' then
    redis.call('HINCRBY', prefix .. 'running-count', service, 1)
  end
end
redis.call('SET', prefix .. 'layout', '2')
return 1
"""
# Brings the per-service and per-client sets and the running counts in step with the jobs, for what
# another release's replicas did to the same Redis during a rolling upgrade (they keep the global sets
# only). Runs when a store opens and with each expiry. ARGV: prefix.
REPAIR = (
    HELPERS
    + """
local prefix = ARGV[1]
for _, id in ipairs(redis.call('ZRANGE', prefix .. 'queued', 0, -1)) do
  local key = prefix .. 'job:' .. id
  local service, client = redis.call('HGET', key, 'service'), redis.call('HGET', key, 'client') or ''
  if redis.call('HGET', key, 'status') ~= 'queued' then
    if service then unqueue(prefix, id, service, client) else redis.call('ZREM', prefix .. 'queued', id) end
  else
    local created_at = redis.call('HGET', key, 'created_at')
    redis.call('ZADD', prefix .. 'queued:' .. service, created_at, id)
    redis.call('ZADD', queued_of(prefix, service, client), created_at, id)
    redis.call('ZADD', prefix .. 'client-queued:' .. client, created_at, id)
    redis.call('ZADD', prefix .. 'client-jobs:' .. client, created_at, id)
    redis.call('ZADD', prefix .. 'turns', 'NX', 0, client)
    redis.call('SADD', prefix .. 'services', service)
  end
end
redis.call('DEL', prefix .. 'running-count')
for _, id in ipairs(redis.call('ZRANGE', prefix .. 'running', 0, -1)) do
  local service = redis.call('HGET', prefix .. 'job:' .. id, 'service')
  if service then redis.call('HINCRBY', prefix .. 'running-count', service, 1) end
end
return 1
"""
)
# KEYS: job, running. ARGV: now, owner, id.
HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[2] and redis.call('HGET', KEYS[1], 'status') == 'running'
   and redis.call('HGET', KEYS[1], 'cancel_requested') == '0' then
  redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
  return 1
end
return 0
"""
# KEYS: job, input, finished. ARGV: owner, status, now, error, outputs, id, prefix.
FINISH = (
    HELPERS
    + """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'error', ARGV[4], 'outputs', ARGV[5])
  redis.call('DEL', KEYS[2])
  stop_running(ARGV[7], ARGV[6], redis.call('HGET', KEYS[1], 'service'))
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
  return 1
end
return 0
"""
)
# KEYS: job, input, finished. ARGV: now, id, prefix.
CANCEL = (
    HELPERS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'cancel_requested', '1')
  redis.call('DEL', KEYS[2])
  unqueue(ARGV[3], ARGV[2], redis.call('HGET', KEYS[1], 'service'), redis.call('HGET', KEYS[1], 'client'))
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
return status
"""
)
