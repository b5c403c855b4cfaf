"""The Lua script of the Redis backend's tail write (:meth:`~._async.AsyncRedisBackend.asave_tail`), and its SHA.

Rules of this module: no I/O. Kept apart from :mod:`.scripts` (the other primitives' scripts), which
it borrows ``wake()`` from, so that waking a waiter is written once.
"""

from __future__ import annotations

import hashlib

from .scripts import _WAKE_FN, HEAD_RANGE

__all__ = ["SAVE_TAIL", "SAVE_TAIL_SHA"]

# KEYS[1] data, KEYS[2] lock, KEYS[3] waiters, KEYS[4] wake-ups; ARGV[1] the TTL in ms ('-': none),
# ARGV[2] the token, ARGV[3] the new metadata line with its newline, ARGV[4] the tail to append.
# When the token holds the lock: deletes the lock (waking one waiter), then returns 0 when the session
# was deleted meanwhile (nothing is written: an ended session is never resurrected) and else replaces
# the stored metadata line (everything before the first newline) by ARGV[3], appends ARGV[4], sets the
# TTL and returns 1. The stored line is read from the first HEAD_RANGE bytes (GETRANGE); when the new
# line has the old one's length (the usual case: times of the same width) it is written in place
# (SETRANGE) and the tail APPENDed, so the data is never copied; else the value is rebuilt server-side.
# When another token holds the lock, or none does: returns 2 if the stored value already starts with
# ARGV[3] and ends with ARGV[4] (this very write, sent again after its reply was lost in a failover:
# the line holds the write's time and version), else 0, writing nothing.
SAVE_TAIL = (
    _WAKE_FN
    + f"""
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  if redis.call('GETRANGE', KEYS[1], 0, #ARGV[3] - 1) == ARGV[3] then
    local n = redis.call('STRLEN', KEYS[1])
    if n >= #ARGV[3] + #ARGV[4] and redis.call('GETRANGE', KEYS[1], n - #ARGV[4], n - 1) == ARGV[4] then
      return 2
    end
  end
  return 0
end
redis.call('DEL', KEYS[2])
wake(3, 4)
local old = redis.call('GETRANGE', KEYS[1], 0, {HEAD_RANGE - 1})
local nl = string.find(old, '\\n', 1, true)
if not nl then
  if old == '' then return 0 end
  old = redis.call('GET', KEYS[1])
  nl = string.find(old, '\\n', 1, true)
  if not nl then return 0 end
end
if nl == #ARGV[3] then
  redis.call('SETRANGE', KEYS[1], 0, ARGV[3])
  redis.call('APPEND', KEYS[1], ARGV[4])
else
  local value = redis.call('GET', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[3] .. string.sub(value, nl + 1) .. ARGV[4])
end
if ARGV[1] == '-' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""
)

#: SHA1 of :data:`SAVE_TAIL`, as EVALSHA wants it.
SAVE_TAIL_SHA = hashlib.sha1(SAVE_TAIL.encode("utf-8")).hexdigest().encode()
