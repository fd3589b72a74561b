-- Per-provider token buckets: tokens and requests per minute (TPM, RPM) and, for a provider
-- that caps them, per day (TPD, RPD), all checked and debited together in one atomic round trip.
--
-- KEYS[1]  minute token bucket     e.g. mp:rl:{groq}:tokens
-- KEYS[2]  minute request bucket   e.g. mp:rl:{groq}:requests
-- KEYS[3]  day token bucket        e.g. mp:rl:{groq}:tokens-day      (optional: KEYS[3] and
-- KEYS[4]  day request bucket      e.g. mp:rl:{groq}:requests-day     KEYS[4] come together)
--          (one hash tag per provider, so every key lives in one Redis Cluster slot)
-- ARGV[1]  op: reserve | adjust | lower | drain | peek
-- ARGV[2]  now in ms, or '' to use Redis TIME (the normal case; a value is for tests only)
-- ARGV[3]  tokens per minute       ARGV[4]  token capacity (burst)
-- ARGV[5]  requests per minute     ARGV[6]  request capacity (burst)
-- ARGV[7], ARGV[8]  operands:
--          reserve  tokens, requests
--          adjust   delta tokens (positive = debt, negative = refund)
--          lower    remaining tokens or '', remaining requests or ''
-- ARGV[9], ARGV[10]  reserve: tokens and requests that must stay in the minute buckets after
--          the debit, '' for none (the headroom kept for other keys' first jobs, see
--          masterplan/admission.py); '' for the other ops. A day bucket keeps no headroom: it
--          refills over hours, not seconds, so it would only hold back a day's share.
-- With the day buckets (4 keys) only:
-- ARGV[11] tokens per day, '' when tokens are not capped per day (KEYS[3] is then untouched)
-- ARGV[12] requests per day, '' when requests are not capped per day (KEYS[4] untouched)
-- ARGV[13] how the day is counted:
--          'rolling'  the bucket refills continuously, the daily limit per 24 h (Groq)
--          <ms>       a fixed window: the epoch ms of the next reset the caller knows of (a
--                     midnight in the provider's zone). The window holding now ends at the first
--                     <ms> + k * 86400000 after now, and the bucket is full again from then.
--
-- Returns
--   reserve               0 granted (every bucket debited), > 0 the wait in ms until all fit
--                         (nothing debited; a fixed day window's wait is the time until it
--                         resets), -1 never fits a capacity
--   adjust, lower, drain  0 (lower and drain touch the minute buckets only: the providers'
--                         remaining-capacity headers and per-minute 429s are about those; a
--                         daily 429 cools the provider down until its reset instead)
--   peek                  {wait_ms, token_level, request_level}: the wait for a call of one
--                         token and one request, and the minute levels in units; with the day
--                         buckets also day_token_level, day_request_level (nil when not capped)
--                         and the epoch ms at which the day buckets are full again
-- The hot ops answer a single integer: it is the cheapest reply to send and to parse.
--
-- Each key holds the string "<level>:<t>": the level in units and a time in ms — for a minute
-- or rolling bucket its last refill, for a fixed day window the window's end (a plain string,
-- so all buckets are read with one MGET and each written with one SET).
-- A minute unit is 1/60000 of a token (or request): a bucket with limit L per minute refills
-- exactly L units per ms. A day unit is 1/86400000: a rolling day with limit L per day refills
-- exactly L units per ms too. All the math is integer and no fraction is ever lost between calls
-- (Redis truncates Lua numbers it returns, and Lua 5.1 only has doubles, exact up to 2^53; the
-- caller keeps per-minute limits at most 1e9 and per-day limits at most 1e8 to stay below).
--
-- Needs Redis >= 5, where scripts replicate their effects, so writing after TIME is allowed.

local UNITS = 60000
local DAY_UNITS = 86400000
local DAY_MS = 86400000
-- Keys outlive the time to refill fully (or the window's end) by this much: an expired key
-- reads as a full bucket, which is exactly what it would be by then.
local MARGIN_MS = 5000

-- floor(a / b) for integers, exact even where the double division rounds.
local function idiv(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end

local function ceil_div(a, b)
  local q = idiv(a, b)
  if q * b < a then q = q + 1 end
  return q
end

local op = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local token_rate = tonumber(ARGV[3])
local token_full = tonumber(ARGV[4]) * UNITS
local request_rate = tonumber(ARGV[5])
local request_full = tonumber(ARGV[6]) * UNITS

local function parse(stored)
  if stored then
    local l, t = string.match(stored, '^(-?%d+):(%d+)$')
    return tonumber(l), tonumber(t)
  end
  return nil, nil
end

-- Current level and refill time of a continuously refilled bucket from its stored value.
-- A missing key is a full bucket. The clock never goes back: an earlier now refills
-- nothing and keeps t.
local function load(stored, full, rate)
  local level, ts = parse(stored)
  if level == nil or ts == nil then
    return full, now
  end
  if now > ts then
    if level < full then
      -- Compare elapsed time against the time to fill, rather than multiplying first,
      -- so a long idle gap cannot overflow.
      local elapsed = now - ts
      if elapsed >= ceil_div(full - level, rate) then
        level = full
      else
        level = level + elapsed * rate
      end
    end
    ts = now
  end
  -- The capacity may have been lowered since the last write.
  if level > full then level = full end
  return level, ts
end

local function save(key, level, ts, full, rate)
  -- %d, not tostring: Lua 5.1 would print large numbers in exponent form.
  redis.call('SET', key, string.format('%d:%d', level, ts),
             'PX', ceil_div(full - level, rate) + MARGIN_MS)
end

-- Milliseconds until the level reaches want.
local function wait_for(level, want, rate)
  if level >= want then return 0 end
  return ceil_div(want - level, rate)
end

-- The day buckets: absent (2 keys), or one or both of tokens and requests capped.
local day = #KEYS >= 4
local rolling, reset_next
local day_t_limit, day_r_limit, day_t_full, day_r_full
if day then
  day_t_limit = tonumber(ARGV[11])
  day_r_limit = tonumber(ARGV[12])
  if day_t_limit then day_t_full = day_t_limit * DAY_UNITS end
  if day_r_limit then day_r_full = day_r_limit * DAY_UNITS end
  rolling = ARGV[13] == 'rolling'
  if not rolling then reset_next = tonumber(ARGV[13]) end
end

-- The end of the fixed window holding now: the first reset_next + k * DAY_MS after now (the
-- caller's clock may be behind Redis's across a midnight).
local function window_end()
  if now < reset_next then return reset_next end
  return reset_next + (idiv(now - reset_next, DAY_MS) + 1) * DAY_MS
end

-- A day bucket's level and time: a rolling one refills like the minute buckets; a fixed
-- window keeps its level until its end, then is full for the next window.
local function load_day(stored, full, rate)
  if rolling then return load(stored, full, rate) end
  local level, ends = parse(stored)
  if level == nil or ends == nil or now >= ends then
    return full, window_end()
  end
  if level > full then level = full end
  return level, ends
end

local function save_day(key, level, t, full, rate)
  if rolling then return save(key, level, t, full, rate) end
  redis.call('SET', key, string.format('%d:%d', level, t), 'PX', t - now + MARGIN_MS)
end

local function wait_day(level, want, rate, t)
  if level >= want then return 0 end
  if rolling then return ceil_div(want - level, rate) end
  return t - now
end

local tl, tt, rl, rt, dtl, dtt, drl, drt
if day then
  local stored = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  tl, tt = load(stored[1], token_full, token_rate)
  rl, rt = load(stored[2], request_full, request_rate)
  if day_t_full then dtl, dtt = load_day(stored[3], day_t_full, day_t_limit) end
  if day_r_full then drl, drt = load_day(stored[4], day_r_full, day_r_limit) end
else
  local stored = redis.call('MGET', KEYS[1], KEYS[2])
  tl, tt = load(stored[1], token_full, token_rate)
  rl, rt = load(stored[2], request_full, request_rate)
end

-- The wait until the day buckets hold want tokens and want requests (in day units).
local function day_waits(want_t, want_r)
  local wait = 0
  if dtl then wait = math.max(wait, wait_day(dtl, want_t, day_t_limit, dtt)) end
  if drl then wait = math.max(wait, wait_day(drl, want_r, day_r_limit, drt)) end
  return wait
end

if op == 'reserve' then
  local tokens, requests = tonumber(ARGV[7]), tonumber(ARGV[8])
  local want_t = tokens * UNITS
  local want_r = requests * UNITS
  if want_t > token_full or want_r > request_full then
    return -1
  end
  if (day_t_limit and tokens > day_t_limit) or (day_r_limit and requests > day_r_limit) then
    return -1
  end
  local keep_t = tonumber(ARGV[9]) or 0
  local keep_r = tonumber(ARGV[10]) or 0
  local wait = math.max(wait_for(tl, want_t + keep_t * UNITS, token_rate),
                        wait_for(rl, want_r + keep_r * UNITS, request_rate),
                        day_waits(tokens * DAY_UNITS, requests * DAY_UNITS))
  if wait > 0 then
    -- Nothing to write: the refill is a pure function of (level, t, now).
    return wait
  end
  save(KEYS[1], tl - want_t, tt, token_full, token_rate)
  save(KEYS[2], rl - want_r, rt, request_full, request_rate)
  if dtl then save_day(KEYS[3], dtl - tokens * DAY_UNITS, dtt, day_t_full, day_t_limit) end
  if drl then save_day(KEYS[4], drl - requests * DAY_UNITS, drt, day_r_full, day_r_limit) end
  return 0
elseif op == 'adjust' then
  -- Debt may take a level below zero so later reservations wait it out;
  -- a refund never fills past the capacity.
  local delta = tonumber(ARGV[7])
  tl = tl - delta * UNITS
  if tl > token_full then tl = token_full end
  save(KEYS[1], tl, tt, token_full, token_rate)
  if dtl then
    dtl = dtl - delta * DAY_UNITS
    if dtl > day_t_full then dtl = day_t_full end
    save_day(KEYS[3], dtl, dtt, day_t_full, day_t_limit)
  end
  return 0
elseif op == 'lower' then
  -- The provider's own count only ever lowers ours: it cannot see our reservations
  -- still in flight, so raising on its word could overshoot.
  if ARGV[7] ~= '' then
    local cap = tonumber(ARGV[7]) * UNITS
    if cap < tl then tl = cap end
    save(KEYS[1], tl, tt, token_full, token_rate)
  end
  if ARGV[8] ~= '' then
    local cap = tonumber(ARGV[8]) * UNITS
    if cap < rl then rl = cap end
    save(KEYS[2], rl, rt, request_full, request_rate)
  end
  return 0
elseif op == 'drain' then
  -- Empty, but keep any debt.
  if tl > 0 then tl = 0 end
  if rl > 0 then rl = 0 end
  save(KEYS[1], tl, tt, token_full, token_rate)
  save(KEYS[2], rl, rt, request_full, request_rate)
  return 0
elseif op == 'peek' then
  local wait = math.max(wait_for(tl, UNITS, token_rate), wait_for(rl, UNITS, request_rate),
                        day_waits(DAY_UNITS, DAY_UNITS))
  if not day then
    return {wait, tl, rl}
  end
  -- When the day buckets are full again: a fixed window's end, or a rolling day's refill.
  local resets = nil
  for _, b in ipairs({{dtl, dtt, day_t_full, day_t_limit}, {drl, drt, day_r_full, day_r_limit}}) do
    if b[1] then
      local at
      if rolling then at = now + wait_for(b[1], b[3], b[4]) else at = b[2] end
      if resets == nil or at > resets then resets = at end
    end
  end
  -- false is a nil reply: that bucket is not capped.
  return {wait, tl, rl, dtl or false, drl or false, resets or false}
end
return redis.error_reply('unknown rate limiter op: ' .. tostring(op))
