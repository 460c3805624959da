-- fastproxy token buckets, state layout rl1 (the version is in every key name).
-- Each bucket is a hash {l = level (tokens left, may be negative after a charge), t = last update, µs}.
--
-- KEYS: the buckets.  ARGV[1]: mode; then per bucket: capacity, period (seconds; 0 = never refills), cost.
--   mode "take":  all or nothing. If every bucket with cost > 0 holds at least its cost, take them all and
--                 return {1, remaining_1, reset_ms_1, remaining_2, ...}; otherwise change nothing and
--                 return {0, index (1-based), level, retry_ms (-1: never), remaining_1, reset_ms_1, ...}
--                 where index is the bucket that waits longest.
--   mode "force": take the costs unconditionally (a negative cost refunds, never past capacity); returns {1}.
--   mode "peek":  change nothing; return {level_1 (string), reset_ms_1, level_2, ...}.
-- Time is Redis's own (TIME), so instances with skewed clocks agree. A clock that steps back refills
-- nothing (the later stamp is kept); a step forward refills at most to capacity.
-- A key expires when its bucket would be full again: a missing key is a full bucket.

local mode = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local cap, period, cost, level, stamp = {}, {}, {}, {}, {}

for i = 1, n do
  local a = 2 + (i - 1) * 3
  cap[i] = tonumber(ARGV[a])
  period[i] = tonumber(ARGV[a + 1]) * 1000000
  cost[i] = tonumber(ARGV[a + 2])
  local s = redis.call('HMGET', KEYS[i], 'l', 't')
  local l, ts = tonumber(s[1]), tonumber(s[2])
  if l == nil or ts == nil then
    l, ts = cap[i], now
  elseif now > ts then
    if period[i] > 0 and cap[i] > 0 then
      l = l + (now - ts) * cap[i] / period[i]
    end
    ts = now
  end
  -- Also clamps a level left over from a larger capacity an admin has since lowered.
  if l > cap[i] then l = cap[i] end
  level[i], stamp[i] = l, ts
end

-- Milliseconds until bucket i is full again, from now (-1: a lifetime quota never refills).
local function until_full(i)
  if level[i] >= cap[i] then return 0 end
  if period[i] == 0 or cap[i] <= 0 then return -1 end
  return math.ceil(((cap[i] - level[i]) * period[i] / cap[i] + (stamp[i] - now)) / 1000)
end

local function store(i)
  local ms = until_full(i)
  if ms == 0 then
    redis.call('DEL', KEYS[i])
    return 0
  end
  redis.call('HSET', KEYS[i], 'l', string.format('%.17g', level[i]), 't', string.format('%.0f', stamp[i]))
  if ms > 0 then
    redis.call('PEXPIRE', KEYS[i], ms + 1)
  else
    redis.call('PERSIST', KEYS[i])
  end
  return ms
end

if mode == 'peek' then
  local out = {}
  for i = 1, n do
    out[#out + 1] = string.format('%.17g', level[i])
    out[#out + 1] = until_full(i)
  end
  return out
end

if mode == 'take' then
  local worst, worst_ms = 0, 0
  for i = 1, n do
    if cost[i] > 0 and level[i] < cost[i] then
      local ms = -1
      if period[i] > 0 and cap[i] > 0 then
        ms = math.max(1, math.ceil(((cost[i] - level[i]) * period[i] / cap[i] + (stamp[i] - now)) / 1000))
      end
      if worst == 0 or worst_ms >= 0 and (ms < 0 or ms > worst_ms) then
        worst, worst_ms = i, ms
      end
    end
  end
  if worst > 0 then
    local out = {0, worst, math.floor(level[worst]), worst_ms}
    for i = 1, n do
      out[#out + 1] = math.floor(level[i])
      out[#out + 1] = until_full(i)
    end
    return out
  end
end

local out = {1}
for i = 1, n do
  if cost[i] ~= 0 then
    level[i] = math.min(cap[i], level[i] - cost[i])
    local ms = store(i)
    out[#out + 1] = math.floor(level[i])
    out[#out + 1] = ms
  else
    out[#out + 1] = math.floor(level[i])
    out[#out + 1] = until_full(i)
  end
end
if mode == 'force' then return {1} end
return out
