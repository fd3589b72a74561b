-- Per-provider token bucket: tokens per minute (TPM) and requests per minute (RPM),
-- checked and debited together in one atomic round trip.
--
-- KEYS[1]  token bucket     e.g. mp:rl:{groq}:tokens
-- KEYS[2]  request bucket   e.g. mp:rl:{groq}:requests
--          (one hash tag per provider, so both keys live in one Redis Cluster slot)
-- ARGV[1]  op: reserve | adjust | lower | drain | peek
-- ARGV[2]  now in ms, or '' to use Redis TIME (the normal case; a value is for tests only)
-- ARGV[3]  tokens per minute       ARGV[4]  token capacity (burst)
-- ARGV[5]  requests per minute     ARGV[6]  request capacity (burst)
-- ARGV[7], ARGV[8]  operands:
--          reserve  tokens, requests (ARGV[9], ARGV[10]: tokens and requests that must stay
--                   in the bucket after the debit, '' for none: the headroom kept for
--                   other keys' first jobs, see masterplan/admission.py)
--          adjust   delta tokens (positive = debt, negative = refund)
--          lower    remaining tokens or '', remaining requests or ''
--
-- Returns
--   reserve               0 granted (both debited), > 0 the wait in ms until both fit
--                         (nothing debited), -1 never fits the capacity
--   adjust, lower, drain  0
--   peek                  {wait_ms, token_level, request_level}: the wait for a call of one
--                         token and one request, and both levels in units
-- The hot ops answer a single integer: it is the cheapest reply to send and to parse.
--
-- Each key holds the string "<level>:<t>": level in units and the ms of the last refill
-- (a plain string, so both buckets are read with one MGET and each written with one SET).
-- A unit is 1/60000 of a token (or request): a bucket with limit L per minute then
-- refills exactly L units per ms, so all the math is integer and no fraction is ever
-- lost between calls (Redis truncates Lua numbers it returns, and Lua 5.1 only has
-- doubles, exact up to 2^53; the caller keeps capacities at most 1e9 to stay far below).
--
-- Needs Redis >= 5, where scripts replicate their effects, so writing after TIME is allowed.

local UNITS = 60000
-- Keys outlive the time to refill fully by this much: an expired key reads as a full
-- bucket, which is exactly what it would be by then.
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

-- Current level and refill time of one bucket from its stored value.
-- A missing key is a full bucket. The clock never goes back: an earlier now refills
-- nothing and keeps t.
local function load(stored, full, rate)
  local level, ts
  if stored then
    local l, t = string.match(stored, '^(-?%d+):(%d+)$')
    level, ts = tonumber(l), tonumber(t)
  end
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

local stored = redis.call('MGET', KEYS[1], KEYS[2])
local tl, tt = load(stored[1], token_full, token_rate)
local rl, rt = load(stored[2], request_full, request_rate)

if op == 'reserve' then
  local want_t = tonumber(ARGV[7]) * UNITS
  local want_r = tonumber(ARGV[8]) * UNITS
  if want_t > token_full or want_r > request_full then
    return -1
  end
  local keep_t = tonumber(ARGV[9]) or 0
  local keep_r = tonumber(ARGV[10]) or 0
  local wait = math.max(wait_for(tl, want_t + keep_t * UNITS, token_rate),
                        wait_for(rl, want_r + keep_r * UNITS, request_rate))
  if wait > 0 then
    -- Nothing to write: the refill is a pure function of (level, t, now).
    return wait
  end
  save(KEYS[1], tl - want_t, tt, token_full, token_rate)
  save(KEYS[2], rl - want_r, rt, request_full, request_rate)
  return 0
elseif op == 'adjust' then
  -- Debt may take the level below zero so later reservations wait it out;
  -- a refund never fills past the capacity.
  tl = tl - tonumber(ARGV[7]) * UNITS
  if tl > token_full then tl = token_full end
  save(KEYS[1], tl, tt, token_full, token_rate)
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
  local wait = math.max(wait_for(tl, UNITS, token_rate), wait_for(rl, UNITS, request_rate))
  return {wait, tl, rl}
end
return redis.error_reply('unknown rate limiter op: ' .. tostring(op))
