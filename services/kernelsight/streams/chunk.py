"""The producer's unit of delivery: a chunk of entries added by one Lua script, atomically,
with a marker that makes its re-send after a lost reply change nothing."""

from __future__ import annotations

import hashlib

CHUNK_MARKER = "chunk:{instance}:{first}"  # under schema.host_key
CHUNK_MARKER_TTL_S = 86_400  # only the last chunk's marker outlives its reply (then deleted)
CHUNK_MAX = 2000
PROBE_KEY = "probe:{instance}"  # under schema.host_key; set at each confirmation: data kept?
PROBE_TTL_S = 86_400

# One chunk of entries, atomically: each XADD with its producer-chosen id; an id Redis refuses
# (another producer wrote a larger one) gets the next packable id above the stream's top, here,
# inside the same script (no follow-up command whose reply could be lost). A marker key, set
# last, records what was moved: the re-send of a chunk whose reply was lost finds it and
# changes nothing, whether or not its entries are still in the stream (a longer re-send adds
# only the entries past the recorded count). Types are checked before
# the first write, and Redis refuses a script at maxmemory only at its first write, so an
# error reply means nothing was added.
# KEYS: this chunk's marker, the previous chunk's marker (deleted), the streams.
# ARGV: marker TTL, SEQ_MAX, MS_MAX, then per entry: stream index into KEYS, id, payload.
# Reply: {entries applied before (a re-send), "i:id i:id ..." (moved; "i:" = no id left), XLENs}.
CHUNK_LUA = """
local nk, n = #KEYS, (#ARGV - 3) / 3
local lens = {}
local start, prev = 1, ''
local done = redis.call('GET', KEYS[1])
if done then
  local cnt, mv = string.match(done, '^(%d+)|(.*)$')
  start, prev = tonumber(cnt) + 1, mv
  if start > n then
    for k = 3, nk do lens[#lens + 1] = redis.call('XLEN', KEYS[k]) end
    return {start - 1, prev, lens}
  end
end
for k = 3, nk do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', not a stream')
  end
end
local seqmax, msmax = tonumber(ARGV[2]), tonumber(ARGV[3])
local tops, moved = {}, {}
if prev ~= '' then moved[1] = prev end
for i = start, n do
  local b = 3 * i
  local key = KEYS[tonumber(ARGV[b + 1])]
  local r = redis.pcall('XADD', key, ARGV[b + 2], 'd', ARGV[b + 3])
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'equal or smaller', 1, true) then return r end
    local top = tops[key]
    if not top then
      local info = redis.call('XINFO', 'STREAM', key)
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then top = info[j + 1] end
      end
    end
    local ms, seq = string.match(top, '^(%d+)-(%d+)$')
    ms, seq = tonumber(ms), tonumber(seq)
    if seq >= seqmax then ms, seq = ms + 1, 0 else seq = seq + 1 end
    if ms > msmax then
      moved[#moved + 1] = i .. ':'
    else
      local id = string.format('%d-%d', ms, seq)
      redis.call('XADD', key, id, 'd', ARGV[b + 3])
      moved[#moved + 1] = i .. ':' .. id
      tops[key] = id
    end
  else
    tops[key] = r
  end
end
local out = table.concat(moved, ' ')
redis.call('SET', KEYS[1], n .. '|' .. out, 'EX', ARGV[1])
if KEYS[2] ~= KEYS[1] then redis.call('DEL', KEYS[2]) end
for k = 3, nk do lens[#lens + 1] = redis.call('XLEN', KEYS[k]) end
return {start - 1, out, lens}
"""
CHUNK_SHA = hashlib.sha1(CHUNK_LUA.encode()).hexdigest().encode()
