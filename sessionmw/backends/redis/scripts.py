"""The Lua scripts of the Redis backend, with what each takes (KEYS, ARGV) and answers, and their SHAs.

Rules of this module: no I/O. A script runs by EVALSHA; on NOSCRIPT (a new or flushed server) the
backend loads its source and runs it once more. Key names come from :class:`.keys.Keys`.

Waking a waiter, across processes: a waiter counts itself in ``p{sid}:waiters`` (:data:`WAIT`), then
blocks in ``BLPOP p{sid}:wakeups``, in the same round trip. A release (:data:`RELEASE`, :data:`SAVE`)
that finds waiters counted takes one off the count and pushes one element: one waiter wakes, in
whichever process, and tries the lock; the others stay counted for the next release. A release with
nobody waiting reads one missing key inside its script, and pays nothing else. So that a release is
never missed: the waiter counts itself only if the lock is still held, in the same script, and if it
is free pushes the element itself; one whose BLPOP timed out uncounts itself (:data:`LEAVE`), or
takes the element a release pushed meanwhile. Both keys expire by themselves (a waiter that died
leaves a count behind: the next release wakes nobody with it, harmlessly).

The scripts read a record's metadata line as text, never through cjson: they split the JSON array
that Python's json.dumps wrote (no spaces, so only a string element can hold a ',' or ']') into its
elements' texts and compare or replace those, so every element they do not replace keeps its exact
text (cjson would round floats to 14 digits and big integers to doubles).
"""

from __future__ import annotations

import hashlib

__all__ = [
    "BIG_RECORD",
    "DELETE",
    "DELETE_SHA",
    "EXTEND",
    "EXTEND_SHA",
    "GC",
    "GC_SHA",
    "HEAD_RANGE",
    "LEAVE",
    "PASS_ON",
    "RELEASE",
    "RELEASE_SHA",
    "SAVE",
    "SAVE_SHA",
    "SCRIPTS",
    "SHAS",
    "TOUCH",
    "TOUCH_SHA",
    "WAIT",
    "WAKEUPS_TTL_MS",
]

#: Milliseconds the keys of waiting live after their last use (the waiters' count, the list of wake-ups).
WAKEUPS_TTL_MS = 60_000
#: Bytes of a record above which a save reads only the start of the record it overwrites (see SAVE).
BIG_RECORD = 8192
#: Bytes of an overwritten big record that a save reads: its metadata line, unless that is longer.
HEAD_RANGE = 1024

# fields(value, n): the texts of the first n elements of the JSON array at the start of value, and the
# position of the ',' or ']' after the nth one; nil when value does not start with such an array.
_FIELDS_FN = r"""
local function fields(value, n)
  if string.byte(value, 1) ~= 91 then return nil end
  local out, i, j = {}, 2, 0
  for k = 1, n do
    if string.byte(value, i) == 34 then
      j = i + 1
      while true do
        local q = string.find(value, '["\\]', j)
        if not q then return nil end
        if string.byte(value, q) == 34 then j = q + 1; break end
        j = q + 2
      end
    else
      j = string.find(value, '[,%]]', i)
      if not j then return nil end
    end
    local c = string.byte(value, j)
    if c ~= 44 and (c ~= 93 or k < n) then return nil end
    out[k] = string.sub(value, i, j - 1)
    i = j + 1
  end
  return out, j
end
"""

# touch(at): apply the touch in ARGV[at..] to the session whose record is KEYS[1]:
#   ARGV[at]      "<last_access> <expires|null> <TTL in ms|->" (- = no TTL: PERSIST)
#   ARGV[at+1]    the last IP; absent = unknown, keep the record's
# When the touch is newer than the record's last access, rewrites the record with last_access, expires
# and (if given) last_ip replaced in its metadata line; else only refreshes the TTL (a newer write won).
# The last IP is written as encode_record writes it: 0 (SAME_IP) when it equals the first IP, in a
# compact line or an older full one alike (decode_record reads each element by rules that fit both).
# Returns 1 when the session exists (touched), 0 when it does not (nothing created).
# It reads the first HEAD_RANGE bytes (GETRANGE): a small record whole, a big one's metadata line; a
# big record whose new line is as long as the old one (the usual case: the same IP, times of the same
# width) is rewritten in place (SETRANGE of the line, then the TTL), never copied; else it is read and
# written whole, as a small one.
_TOUCH_FN = (
    _FIELDS_FN
    + rf"""
local function touch(at)
  local value = redis.call('GETRANGE', KEYS[1], 0, {HEAD_RANGE - 1})
  local whole = #value < {HEAD_RANGE}
  if value == '' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  local at_, ex, ttl = string.match(ARGV[at], '^(%S+) (%S+) (%S+)$')
  local f, j = fields(value, 9)
  if not f and not whole then
    value = redis.call('GET', KEYS[1])
    whole = true
    f, j = fields(value, 9)
  end
  local old = f and tonumber(f[2])
  if old and old < tonumber(at_) then
    f[2] = at_
    f[9] = ex
    if ARGV[at + 1] then
      if '"' .. ARGV[at + 1] .. '"' == f[4] then f[5] = '0' else f[5] = cjson.encode(ARGV[at + 1]) end
    end
    local head = '[' .. table.concat(f, ',')
    if whole or #head ~= j - 1 then
      if not whole then value = redis.call('GET', KEYS[1]) end
      value = head .. string.sub(value, j)
      if ttl == '-' then
        redis.call('SET', KEYS[1], value)
      else
        redis.call('SET', KEYS[1], value, 'PX', ttl)
      end
      return 1
    end
    redis.call('SETRANGE', KEYS[1], 0, head)
  end
  if ttl == '-' then
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  return 1
end
"""
)

# wake(w, l): after a release, when waiters are counted in KEYS[w], take one off and push one wake-up
# onto the list KEYS[l]: one waiter's BLPOP returns. Nobody counted: one read of a missing key.
_WAKE_FN = f"""
local function wake(w, l)
  local n = tonumber(redis.call('GET', KEYS[w]))
  if n and n > 0 then
    redis.call('DECR', KEYS[w])
    redis.call('LPUSH', KEYS[l], '1')
    redis.call('PEXPIRE', KEYS[l], {WAKEUPS_TTL_MS})
  end
end
"""

# head(value): the JSON metadata line of a stored record (before its first newline), or '' if none.
_HEAD_FN = r"""
local function head(value)
  local nl = string.find(value, '\n', 1, true)
  if not nl then return '' end
  return string.sub(value, 1, nl - 1)
end
"""

# KEYS[1] data, KEYS[2] lock, KEYS[3] waiters, KEYS[4] wake-ups; ARGV[1] the TTL in ms ('-': none),
# ARGV[2] the token, ARGV[3] the record's user id as its metadata line has it (JSON text), ARGV[4] the record.
# Returns 0 (and writes nothing) when another token holds the lock, or none does; but 2 when the record
# stored is already this very record: a save sent again after its reply was lost (a failover) wrote it
# the first time, and deleted the lock then (byte-equal records: the same data, times and version, so
# a later writer's record never matches). Else deletes the lock and returns 0
# when the session was deleted meanwhile (SET XX: an ended session is never resurrected), 1 when the
# record was written over one of the same user, and the overwritten record's metadata line when the
# user changed (the caller then moves the sid between index sets: another slot in Cluster). Deleting the
# lock wakes one waiter (wake()).
# The user id is the metadata line's third element, after two numbers that hold no comma: two plain
# finds locate it, where parsing the JSON in Lua cost this hot script half its time.
# The overwritten record comes back from SET ... GET, a copy of all of it. For a record over
# BIG_RECORD bytes the script reads only the start of the old one instead (GETRANGE of HEAD_RANGE
# bytes; all of it only when its metadata line is longer), then SETs: one command more, but a copy
# of the whole old record less, which costs the server more than a command from about 4 KB on
# (measured by benchmarks/bench_redis_commands.py: a 64 KB save's script time falls by a third).
SAVE = (
    _HEAD_FN
    + _WAKE_FN
    + f"""
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  if redis.call('GET', KEYS[1]) == ARGV[4] then return 2 end
  return 0
end
local old
if #ARGV[4] > {BIG_RECORD} then
  old = redis.call('GETRANGE', KEYS[1], 0, {HEAD_RANGE - 1})
  if #old == {HEAD_RANGE} and not string.find(old, '\\n', 1, true) then old = redis.call('GET', KEYS[1]) end
  local written
  if ARGV[1] == '-' then
    written = redis.call('SET', KEYS[1], ARGV[4], 'XX')
  else
    written = redis.call('SET', KEYS[1], ARGV[4], 'XX', 'PX', ARGV[1])
  end
  if not written then old = false end
elseif ARGV[1] == '-' then
  old = redis.call('SET', KEYS[1], ARGV[4], 'XX', 'GET')
else
  old = redis.call('SET', KEYS[1], ARGV[4], 'XX', 'GET', 'PX', ARGV[1])
end
redis.call('DEL', KEYS[2])
wake(3, 4)
if not old then return 0 end
local a = string.find(old, ',', 1, true)
local b = a and string.find(old, ',', a + 1, true)
if b then
  local e = b + #ARGV[3]
  if string.sub(old, b + 1, e) == ARGV[3] and string.byte(old, e + 1) == 44 then return 1 end
end
return head(old)
"""
)

# KEYS[1] data. Deletes it; returns the deleted record's metadata line (for its user), or nil when there
# was no record.
DELETE = (
    _HEAD_FN
    + """
local old = redis.call('GETDEL', KEYS[1])
if not old then return false end
return head(old)
"""
)

# KEYS[1] data; ARGV[1] now. Deletes the session when its expiry (element 9 of the metadata line) is
# before now; returns its metadata line then, else nil. The check and the delete are atomic, so a
# session touched or saved since it was listed is kept.
GC = (
    _FIELDS_FN
    + _HEAD_FN
    + """
local data = redis.call('GET', KEYS[1])
if not data then return false end
local f = fields(data, 9)
if not f or not tonumber(f[2]) then return false end
local expires = tonumber(f[9])
if not expires or expires >= tonumber(ARGV[1]) then return false end
redis.call('DEL', KEYS[1])
return head(data)
"""
)

# KEYS[1] data, KEYS[2] lock, KEYS[3] waiters, KEYS[4] wake-ups; ARGV[1] token, ARGV[2..] an optional
# touch (see touch()). Returns 1 when the token held the lock (deleted, one waiter woken; the touch
# applied if the data still exists), else 0.
RELEASE = (
    _TOUCH_FN
    + _WAKE_FN
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
wake(3, 4)
if #ARGV > 1 then touch(2) end
return 1
"""
)

# KEYS[1] data; ARGV[1..] a touch (see touch()).
# Returns 1 when the session existed and was touched, 0 when there is none (nothing created).
TOUCH = (
    _TOUCH_FN
    + """
return touch(1)
"""
)

# KEYS[1] lock; ARGV[1] token, ARGV[2] new expiry in ms.
# Returns 1 when the token held the lock and its expiry was pushed out, else 0.
EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# The scripts of waiting run by EVAL with their source, never EVALSHA: WAIT goes in one pipeline with
# the BLPOP after it, which would block in vain behind a NOSCRIPT error. Only waiters run them.

# KEYS[1] lock, KEYS[2] waiters, KEYS[3] wake-ups; ARGV[1] how long the keys live, in ms.
# A waiter about to BLPOP KEYS[3]: counts itself in KEYS[2] while the lock is held; when it is free
# (released since the waiter's try), pushes the wake-up a release would have. Returns 1 if counted.
WAIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
  return 1
end
redis.call('LPUSH', KEYS[3], '1')
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return 0
"""

# KEYS[1] waiters, KEYS[2] wake-ups. A waiter whose BLPOP timed out: takes a wake-up pushed since (and
# returns 1: woken after all), else takes itself off the count (returns 0).
LEAVE = """
if redis.call('LPOP', KEYS[2]) then return 1 end
if (tonumber(redis.call('GET', KEYS[1])) or 0) > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""

# KEYS[1] lock, KEYS[2] waiters, KEYS[3] wake-ups. A waiter cancelled in its BLPOP may have taken a
# wake-up with it: when the lock is free, wake the next waiter as a release would. Returns nothing.
PASS_ON = (
    _WAKE_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then wake(2, 3) end
return 0
"""
)

#: Script name -> Lua source. Run by EVALSHA; on NOSCRIPT the backend loads the source and retries.
SCRIPTS: dict[str, str] = {
    "save": SAVE,
    "release": RELEASE,
    "touch": TOUCH,
    "extend": EXTEND,
    "delete": DELETE,
    "gc": GC,
}

#: Script name -> SHA1 of its source, as EVALSHA wants it (computed once, here).
SHAS: dict[str, str] = {name: hashlib.sha1(src.encode("utf-8")).hexdigest() for name, src in SCRIPTS.items()}

# As bytes, for the commands of the hot path: the encoder sends bytes as they are.
SAVE_SHA = SHAS["save"].encode()
RELEASE_SHA = SHAS["release"].encode()
TOUCH_SHA = SHAS["touch"].encode()
EXTEND_SHA = SHAS["extend"].encode()
DELETE_SHA = SHAS["delete"].encode()
GC_SHA = SHAS["gc"].encode()
