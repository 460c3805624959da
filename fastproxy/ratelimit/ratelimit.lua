-- fastproxy token buckets, state layout rl1 (the version is in every key name).
-- Each bucket is a hash {l = level (tokens left, may be negative after a charge), t = last update, µs}.
--
-- One call of the script carries a batch of operations (the limiter sends every operation queued while
-- the previous batch was on the wire in one EVALSHA); each runs on its own, in order, exactly as if it
-- had been sent alone, so a later operation sees what an earlier one took.
--
-- KEYS: the buckets of every operation, in order.
-- ARGV[1]: number of operations; then per operation: mode, number of buckets n, and per bucket:
--   capacity, period (seconds; 0 = never refills), cost.
-- Returns one reply per operation, in order:
--   mode "take":  all or nothing. If every bucket with cost > 0 holds at least its cost, take them all and
--                 reply {1, remaining_1, reset_ms_1, remaining_2, ...}; otherwise change nothing and
--                 reply {0, index (1-based), level, retry_ms (-1: never), remaining_1, reset_ms_1, ...}
--                 where index is the bucket that waits longest.
--   mode "force": take the costs unconditionally (a negative cost refunds, never past capacity); reply {1}.
--   mode "peek":  change nothing; reply {level_1 (string), reset_ms_1, level_2, ...}.
-- Time is Redis's own (TIME), so instances with skewed clocks agree. A clock that steps back refills
-- nothing (the later stamp is kept); a step forward refills at most to capacity.
-- A key expires when its bucket would be full again: a missing key is a full bucket.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- One operation over KEYS[k + 1 .. k + n], its arguments from ARGV[a].
local function run(mode, k, n, a)
  local keys, cap, period, cost, level, stamp = {}, {}, {}, {}, {}, {}

  for i = 1, n do
    keys[i] = KEYS[k + i]
    cap[i] = tonumber(ARGV[a])
    period[i] = tonumber(ARGV[a + 1]) * 1000000
    cost[i] = tonumber(ARGV[a + 2])
    a = a + 3
    local s = redis.call('HMGET', keys[i], 'l', 't')
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
      redis.call('DEL', keys[i])
      return 0
    end
    redis.call('HSET', keys[i], 'l', string.format('%.17g', level[i]), 't', string.format('%.0f', stamp[i]))
    if ms > 0 then
      redis.call('PEXPIRE', keys[i], ms + 1)
    else
      redis.call('PERSIST', keys[i])
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
end

local replies = {}
local k, a = 0, 2
for op = 1, tonumber(ARGV[1]) do
  local mode, n = ARGV[a], tonumber(ARGV[a + 1])
  replies[op] = run(mode, k, n, a + 2)
  k, a = k + n, a + 2 + 3 * n
end
return replies
