//! The registry's shared state in Redis, changed only by these Lua scripts so
//! that every change is atomic cluster-wide (one code per session, one browser
//! per session, one node ending a side or expiring a code). Only
//! `cluster::store` calls them and reads their replies.
//!
//! Keys, all under `relay:`:
//! - `code:<CODE>` -> session id, while the code can be joined.
//! - `xcode:<CODE>` -> a code that expired (10 min), for `EXPIRED_CODE`.
//! - `s:<sid>` hash: `code`, `live` (1 while joinable), and per side
//!   (`m_` mac, `b_` browser): `tok` (SHA-256 of the resume token), `at`
//!   (node), `conn`, `state` (`here`/`away`), `acc` (checkpoint of frames
//!   accepted from it); `m_rbase`/`m_sbase`: the mac's receive and send
//!   counts when the current browser joined.
//! - `end:<sid>:<role>` -> `<ERROR_CODE>|<token hash>` of a side that ended (10 min).
//! - `expiries` zset: session id by code expiry time.
//! - `grace` zset: `<sid>|<role>` by the end of the side's grace period.
//! - `sides:<node>` set: `<sid>|<role>` of the sides homed on a node.
//! - `lease:<node>`, `nodes` set: node liveness.
//! - `failedjoins:<minute>` -> failed joins in that Unix minute (2 min).
//! - `attack` -> `1` while the cluster is under a guessing attack (its TTL:
//!   `RELAY_UNDER_ATTACK_FOR` from the last failed join past the limit).
//!
//! A room (docs/design.md, "Rooms across nodes") adds, in `s:<sid>`:
//! `r_max`, `r_admit` (`ask`/`auto`), `r_next` (next guest id), `r_n`
//! (guests waiting or in), `r_ids` (their ids, space separated), per guest
//! `g<id>_tok`, `_at`, `_conn`, `_state` (`wait`/`here`/`away`), `_acc`, and
//! `gt_<token hash>` -> guest id. A guest is the side `g<id>` in
//! `sides:<node>`, `grace` and the scripts' `role`; one that ended is
//! remembered by token: `gend:<sid>:<token hash>` -> `<ERROR_CODE>` (10 min).
//! A pairing has none of these fields, and its scripts' room branches are
//! behind one field it never has (`r_max`).

use redis::Script;

/// Shared Lua that ends one side; expects `s`, `sid`, `role`, `pre`, `f`
/// (HMGET of at, conn, tok, peer at, peer state, live, code, peer tok) and
/// `ttl` (end-key lifetime in ms) to be set, and returns the script's reply.
const END_SIDE: &str = r#"
  redis.call('ZREM', pre .. 'grace', sid .. '|' .. role)
  if f[1] then redis.call('SREM', pre .. 'sides:' .. f[1], sid .. '|' .. role) end
  if f[10] and string.sub(role, 1, 1) == 'g' then
    end_guest(string.sub(role, 2), f[1], f[3], 'RESUME_EXPIRED', ttl)
    return {'ok', f[4] or '', f[5] or '', f[6] or '0', f[7] or '', f[1] or ''}
  end
  if role == 'browser' then
    redis.call('HDEL', s, 'b_tok', 'b_at', 'b_conn', 'b_state', 'b_acc')
    redis.call('SET', pre .. 'end:' .. sid .. ':browser', 'RESUME_EXPIRED|' .. f[3], 'PX', ttl)
    return {'ok', f[4] or '', f[5] or '', f[6] or '0', f[7] or '', f[1] or ''}
  end
  local out = {'ok', f[4] or '', f[5] or '', f[6] or '0', f[7] or '', f[1] or ''}
  if f[10] then
    -- A room's host: every guest's session is over; their nodes follow the reply.
    for _, id in ipairs(room_ids(s)) do
      local g = redis.call('HMGET', s, 'g' .. id .. '_at', 'g' .. id .. '_tok')
      redis.call('ZREM', pre .. 'grace', sid .. '|g' .. id)
      if g[1] then
        redis.call('SREM', pre .. 'sides:' .. g[1], sid .. '|g' .. id)
        table.insert(out, g[1])
      end
      if g[2] then
        redis.call('SET', pre .. 'gend:' .. sid .. ':' .. g[2], 'MAC_DISCONNECTED', 'PX', ttl)
      end
    end
  end
  redis.call('DEL', s)
  if f[6] == '1' then redis.call('DEL', pre .. 'code:' .. f[7]) end
  redis.call('ZREM', pre .. 'expiries', sid)
  redis.call('SET', pre .. 'end:' .. sid .. ':mac', 'RESUME_EXPIRED|' .. f[3], 'PX', ttl)
  if f[8] then
    redis.call('SET', pre .. 'end:' .. sid .. ':browser', 'MAC_DISCONNECTED|' .. f[8], 'PX', ttl)
    redis.call('ZREM', pre .. 'grace', sid .. '|browser')
    if f[4] then redis.call('SREM', pre .. 'sides:' .. f[4], sid .. '|browser') end
  end
  return out
"#;

/// Shared Lua of rooms: `room_ids(s)` lists the ids in `r_ids`;
/// `end_guest(id, node, tok, mark, ttl)` takes guest `id` out of the room
/// (expects `pre`, `sid`, `s`), remembering its token with `mark` (an error
/// code, or nil: a denied guest never had its token).
const ROOM: &str = r#"
  local function room_ids(s)
    local ids = {}
    for i in string.gmatch(redis.call('HGET', s, 'r_ids') or '', '%d+') do table.insert(ids, i) end
    return ids
  end
  local function end_guest(id, node, tok, mark, ttl)
    local g = 'g' .. id .. '_'
    redis.call('ZREM', pre .. 'grace', sid .. '|g' .. id)
    if node then redis.call('SREM', pre .. 'sides:' .. node, sid .. '|g' .. id) end
    redis.call('HDEL', s, g .. 'tok', g .. 'at', g .. 'conn', g .. 'state', g .. 'acc')
    if tok then
      redis.call('HDEL', s, 'gt_' .. tok)
      if mark then redis.call('SET', pre .. 'gend:' .. sid .. ':' .. tok, mark, 'PX', ttl) end
    end
    redis.call('HINCRBY', s, 'r_n', -1)
    local keep = {}
    for _, i in ipairs(room_ids(s)) do
      if i ~= id then table.insert(keep, i) end
    end
    redis.call('HSET', s, 'r_ids', table.concat(keep, ' '))
  end
"#;

/// Shared Lua that reads a side: sets `pre`, `sid`, `role`, `s`, `p`, `q`,
/// `f` (`f[10]` is `r_max`, set in a room), and the room helpers of [`ROOM`].
/// A room guest `g<id>` is read like a browser: its peer is the host.
const READ_SIDE: &str = r#"
  local pre, sid, role = ARGV[1], ARGV[2], ARGV[3]
  local s = pre .. 's:' .. sid
  local p = (role == 'mac') and 'm_' or ((role == 'browser') and 'b_' or (role .. '_'))
  local q = (role == 'mac') and 'b_' or 'm_'
  local f = redis.call('HMGET', s, p .. 'at', p .. 'conn', p .. 'tok', q .. 'at', q .. 'state', 'live', 'code', q .. 'tok', p .. 'state', 'r_max')
"#;

/// Every script of the registry, loaded once.
pub(crate) struct Scripts {
    /// Creates a session with a code, if the code is free.
    pub(crate) register: Script,
    /// Claims the browser side of a session by code.
    pub(crate) join: Script,
    /// Takes a side over with its token.
    pub(crate) resume: Script,
    /// Marks a side away and starts its grace period.
    pub(crate) away: Script,
    /// Ends a side for good (the mac's end ends the session).
    pub(crate) end_side: Script,
    /// Ends a side whose grace period is over, if no one did yet.
    pub(crate) grace_end: Script,
    /// Expires a code, once; ends the session if no browser joined.
    pub(crate) expire_code: Script,
    /// Marks the sides of a dead node away, once.
    pub(crate) dead_node: Script,
    /// Writes a checkpoint field if the session still exists.
    pub(crate) checkpoint: Script,
    /// Claims a side back for its node after others took the node for dead.
    pub(crate) reclaim: Script,
    /// Takes a room guest over with its token.
    pub(crate) resume_guest: Script,
    /// Admits or denies a waiting room guest.
    pub(crate) decide: Script,
    /// Removes a room guest, waiting or in.
    pub(crate) remove: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    /// Builds the scripts (they are sent to Redis on first use).
    pub(crate) fn new() -> Self {
        Scripts {
            // KEYS: code, xcode, session, expiries, sides:<node>
            // ARGV: sid, code, tok, node, conn, code_ttl_ms, expires_at_ms, session_ttl_ms
            //       [, max_guests, admit ('ask'/'auto'): a room]
            register: Script::new(
                r#"
                if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
                if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[6]) then return 0 end
                redis.call('HSET', KEYS[3], 'code', ARGV[2], 'live', '1', 'm_tok', ARGV[3],
                  'm_at', ARGV[4], 'm_conn', ARGV[5], 'm_state', 'here', 'm_acc', '0',
                  'm_rbase', '0', 'm_sbase', '0')
                if ARGV[9] then
                  redis.call('HSET', KEYS[3], 'r_max', ARGV[9], 'r_admit', ARGV[10],
                    'r_next', '1', 'r_n', '0', 'r_ids', '')
                end
                redis.call('PEXPIRE', KEYS[3], ARGV[8])
                redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
                redis.call('SADD', KEYS[5], ARGV[1] .. '|mac')
                return 1
                "#,
            ),
            // KEYS: code, xcode, failed-join count of this minute, attack flag
            // ARGV: pre, tok, node, conn, session_ttl_ms, failed-join limit (0: none),
            //       attack_for_ms
            // An unknown or expired code counts as a failed join; from the
            // limit on, each one (re)sets the attack flag for attack_for_ms,
            // while which new codes are long. No join is refused for it. A
            // room's join takes the next guest id ('guest'), or is refused ('full').
            join: Script::new(
                r#"
                local pre = ARGV[1]
                local limit = tonumber(ARGV[6])
                local function failed(why)
                  local n = redis.call('INCR', KEYS[3])
                  if n == 1 then redis.call('PEXPIRE', KEYS[3], 120000) end
                  if limit > 0 and n >= limit then redis.call('SET', KEYS[4], '1', 'PX', ARGV[7]) end
                  return {why}
                end
                local sid = redis.call('GET', KEYS[1])
                if not sid then
                  if redis.call('EXISTS', KEYS[2]) == 1 then return failed('expired') end
                  return failed('invalid')
                end
                local s = pre .. 's:' .. sid
                local f = redis.call('HMGET', s, 'live', 'b_tok', 'm_at', 'm_state', 'r_max')
                if f[1] ~= '1' then return failed('expired') end
                if f[5] then
                  local r = redis.call('HMGET', s, 'r_n', 'r_admit', 'r_ids')
                  if tonumber(r[1]) >= tonumber(f[5]) then return {'full'} end
                  local id = tostring(redis.call('HINCRBY', s, 'r_next', 1) - 1)
                  local g = 'g' .. id .. '_'
                  local state = (r[2] == 'auto') and 'here' or 'wait'
                  redis.call('HINCRBY', s, 'r_n', 1)
                  redis.call('HSET', s, g .. 'tok', ARGV[2], g .. 'at', ARGV[3], g .. 'conn', ARGV[4],
                    g .. 'state', state, g .. 'acc', '0', 'gt_' .. ARGV[2], id,
                    'r_ids', (r[3] == '' or not r[3]) and id or (r[3] .. ' ' .. id))
                  redis.call('PEXPIRE', s, ARGV[5])
                  redis.call('SADD', pre .. 'sides:' .. ARGV[3], sid .. '|g' .. id)
                  return {'guest', sid, id, state, f[3] or '', f[4] or ''}
                end
                if f[2] then return {'taken'} end
                redis.call('HSET', s, 'b_tok', ARGV[2], 'b_at', ARGV[3], 'b_conn', ARGV[4],
                  'b_state', 'here', 'b_acc', '0')
                redis.call('PEXPIRE', s, ARGV[5])
                redis.call('SADD', pre .. 'sides:' .. ARGV[3], sid .. '|browser')
                return {'ok', sid, f[3] or '', f[4] or ''}
                "#,
            ),
            // ARGV: pre, sid, role, tok, node, conn, session_ttl_ms
            // A browser's token in a room is a guest's: 'room' sends the
            // caller to `resume_guest`.
            resume: Script::new(&format!(
                r#"
                {READ_SIDE}
                if f[10] and role == 'browser' then return {{'room'}} end
                if f[3] ~= ARGV[4] then
                  local e = redis.call('GET', pre .. 'end:' .. sid .. ':' .. role)
                  if e then
                    local sep = string.find(e, '|', 1, true)
                    if sep and string.sub(e, sep + 1) == ARGV[4] then
                      return {{'ended', string.sub(e, 1, sep - 1)}}
                    end
                  end
                  return {{'invalid'}}
                end
                redis.call('HSET', s, p .. 'at', ARGV[5], p .. 'conn', ARGV[6], p .. 'state', 'here')
                redis.call('PEXPIRE', s, ARGV[7])
                redis.call('ZREM', pre .. 'grace', sid .. '|' .. role)
                if f[1] ~= ARGV[5] then
                  if f[1] then redis.call('SREM', pre .. 'sides:' .. f[1], sid .. '|' .. role) end
                  redis.call('SADD', pre .. 'sides:' .. ARGV[5], sid .. '|' .. role)
                end
                local c = redis.call('HMGET', s, p .. 'acc', 'm_rbase', 'm_sbase')
                local function alive(n)
                  if not n or n == '' then return '0' end
                  return tostring(redis.call('EXISTS', pre .. 'lease:' .. n))
                end
                local out = {{'ok', f[1] or '', f[2] or '', f[9] or '', f[4] or '', f[5] or '',
                  f[7] or '', f[6] or '0', c[1] or '0', c[2] or '0', c[3] or '0',
                  alive(f[1]), alive(f[4])}}
                if f[10] and role == 'mac' then
                  -- A room's host: its guests follow (id, node, state), for
                  -- their nodes to hand over what they hold.
                  for id in string.gmatch(redis.call('HGET', s, 'r_ids') or '', '%d+') do
                    local g = redis.call('HMGET', s, 'g' .. id .. '_at', 'g' .. id .. '_state')
                    table.insert(out, id)
                    table.insert(out, g[1] or '')
                    table.insert(out, g[2] or '')
                  end
                end
                return out
                "#
            )),
            // ARGV: pre, sid, role, node, conn, grace_deadline_ms
            away: Script::new(&format!(
                r#"
                {READ_SIDE}
                if f[1] ~= ARGV[4] or f[2] ~= ARGV[5] then return {{'stale'}} end
                redis.call('HSET', s, p .. 'state', 'away')
                redis.call('ZADD', pre .. 'grace', ARGV[6], sid .. '|' .. role)
                return {{'ok', f[4] or '', f[5] or ''}}
                "#
            )),
            // ARGV: pre, sid, role, node, conn ('' = whoever holds it), end_ttl_ms
            end_side: Script::new(&format!(
                r#"
                {READ_SIDE}
                {ROOM}
                if not f[3] then return {{'gone'}} end
                if ARGV[5] ~= '' and (f[1] ~= ARGV[4] or f[2] ~= ARGV[5]) then return {{'stale'}} end
                local ttl = ARGV[6]
                {END_SIDE}
                "#
            )),
            // ARGV: pre, sid, role, end_ttl_ms
            grace_end: Script::new(&format!(
                r#"
                {READ_SIDE}
                {ROOM}
                if redis.call('ZREM', pre .. 'grace', sid .. '|' .. role) == 0 then return {{'skip'}} end
                if not f[3] or f[9] ~= 'away' then return {{'skip'}} end
                local ttl = ARGV[4]
                {END_SIDE}
                "#
            )),
            // ARGV: pre, sid, claim ('1' = the code timer fired), end_ttl_ms, xcode_ttl_ms
            expire_code: Script::new(
                r#"
                local pre, sid = ARGV[1], ARGV[2]
                local s = pre .. 's:' .. sid
                if ARGV[3] == '1' and redis.call('ZREM', pre .. 'expiries', sid) == 0 then return {'skip'} end
                local f = redis.call('HMGET', s, 'live', 'code', 'b_tok', 'm_at', 'm_state', 'm_tok', 'r_n')
                if not f[6] then return {'skip'} end
                if f[1] == '1' then
                  redis.call('HSET', s, 'live', '0')
                  redis.call('DEL', pre .. 'code:' .. f[2])
                  redis.call('SET', pre .. 'xcode:' .. f[2], '1', 'PX', ARGV[5])
                end
                -- A room with guests (waiting or in) carries on, as a pairing does.
                if f[3] or tonumber(f[7] or '0') > 0 then return {'paired'} end
                redis.call('DEL', s)
                redis.call('ZREM', pre .. 'grace', sid .. '|mac')
                redis.call('ZREM', pre .. 'expiries', sid)
                if f[4] then redis.call('SREM', pre .. 'sides:' .. f[4], sid .. '|mac') end
                redis.call('SET', pre .. 'end:' .. sid .. ':mac', 'RESUME_EXPIRED|' .. f[6], 'PX', ARGV[4])
                return {'ended', f[4] or '', f[5] or '', f[2] or ''}
                "#,
            ),
            // ARGV: pre, node, grace_deadline_ms
            // Reply, flat per side: session, side, peer node, 'away'/'gone';
            // a room host's side once per other node holding its guests.
            dead_node: Script::new(&format!(
                r#"
                local pre, node = ARGV[1], ARGV[2]
                if redis.call('SREM', pre .. 'nodes', node) == 0 then return {{}} end
                local out = {{}}
                for _, m in ipairs(redis.call('SMEMBERS', pre .. 'sides:' .. node)) do
                  local sep = string.find(m, '|', 1, true)
                  local sid, role = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
                  local s = pre .. 's:' .. sid
                  local p = (role == 'mac') and 'm_' or ((role == 'browser') and 'b_' or (role .. '_'))
                  local q = (role == 'mac') and 'b_' or 'm_'
                  local f = redis.call('HMGET', s, p .. 'at', p .. 'state', q .. 'at', q .. 'state', p .. 'tok')
                  if f[1] == node then
                    if f[2] == 'wait' then
                      -- A guest still waiting for its host never had its
                      -- token: it cannot resume, so it is gone at once.
                      {ROOM}
                      end_guest(string.sub(role, 2), nil, f[5], nil, 0)
                    elseif f[2] == 'here' then
                      redis.call('HSET', s, p .. 'state', 'away')
                      redis.call('ZADD', pre .. 'grace', ARGV[3], m)
                    end
                    -- A room host's peers are its guests: one entry per
                    -- other node holding any, so each is told it is away.
                    local told = false
                    if role == 'mac' and redis.call('HEXISTS', s, 'r_max') == 1 then
                      local seen = {{}}
                      for gid in string.gmatch(redis.call('HGET', s, 'r_ids') or '', '%S+') do
                        local at = redis.call('HGET', s, 'g' .. gid .. '_at')
                        if at and at ~= node and not seen[at] then
                          seen[at] = true
                          told = true
                          table.insert(out, sid)
                          table.insert(out, role)
                          table.insert(out, at)
                          table.insert(out, 'away')
                        end
                      end
                    end
                    if not told then
                      table.insert(out, sid)
                      table.insert(out, role)
                      table.insert(out, f[3] or '')
                      table.insert(out, (f[2] == 'wait') and 'gone' or 'away')
                    end
                  end
                end
                redis.call('DEL', pre .. 'sides:' .. node)
                return out
                "#
            )),
            // ARGV: pre, sid, role, node, conn
            reclaim: Script::new(&format!(
                r#"
                {READ_SIDE}
                if not f[3] then return {{'gone'}} end
                if f[1] ~= ARGV[4] then return {{'moved'}} end
                redis.call('HSET', s, p .. 'state', 'here', p .. 'conn', ARGV[5])
                redis.call('ZREM', pre .. 'grace', sid .. '|' .. role)
                redis.call('SADD', pre .. 'sides:' .. ARGV[4], sid .. '|' .. role)
                return {{'ok', f[4] or '', f[5] or ''}}
                "#
            )),
            // ARGV: pre, sid, tok, node, conn, session_ttl_ms
            // A waiting guest never had its token: it cannot resume.
            resume_guest: Script::new(
                r#"
                local pre, sid, tok = ARGV[1], ARGV[2], ARGV[3]
                local s = pre .. 's:' .. sid
                local id = redis.call('HGET', s, 'gt_' .. tok)
                if not id then
                  local e = redis.call('GET', pre .. 'gend:' .. sid .. ':' .. tok)
                  if e then return {'ended', e} end
                  return {'invalid'}
                end
                local g = 'g' .. id .. '_'
                local f = redis.call('HMGET', s, g .. 'at', g .. 'conn', g .. 'state', 'm_at', 'm_state', g .. 'acc')
                if f[3] == 'wait' then return {'invalid'} end
                local m = sid .. '|g' .. id
                redis.call('HSET', s, g .. 'at', ARGV[4], g .. 'conn', ARGV[5], g .. 'state', 'here')
                redis.call('PEXPIRE', s, ARGV[6])
                redis.call('ZREM', pre .. 'grace', m)
                if f[1] ~= ARGV[4] then
                  if f[1] then redis.call('SREM', pre .. 'sides:' .. f[1], m) end
                  redis.call('SADD', pre .. 'sides:' .. ARGV[4], m)
                end
                local function alive(n)
                  if not n or n == '' then return '0' end
                  return tostring(redis.call('EXISTS', pre .. 'lease:' .. n))
                end
                return {'ok', id, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '',
                  f[6] or '0', alive(f[1]), alive(f[4])}
                "#,
            ),
            // ARGV: pre, sid, guest id, 'admit'/'deny', end_ttl_ms
            decide: Script::new(&format!(
                r#"
                local pre, sid, id = ARGV[1], ARGV[2], ARGV[3]
                local s = pre .. 's:' .. sid
                {ROOM}
                local g = 'g' .. id .. '_'
                local f = redis.call('HMGET', s, g .. 'state', g .. 'at', g .. 'conn', g .. 'tok')
                if f[1] ~= 'wait' then return {{'unknown'}} end
                if ARGV[4] == 'admit' then
                  redis.call('HSET', s, g .. 'state', 'here')
                else
                  end_guest(id, f[2], f[4], nil, ARGV[5])
                end
                return {{'ok', f[2] or '', f[3] or ''}}
                "#
            )),
            // ARGV: pre, sid, guest id, end_ttl_ms, mark (how its token is refused)
            remove: Script::new(&format!(
                r#"
                local pre, sid, id = ARGV[1], ARGV[2], ARGV[3]
                local s = pre .. 's:' .. sid
                {ROOM}
                local g = 'g' .. id .. '_'
                local f = redis.call('HMGET', s, g .. 'state', g .. 'at', g .. 'conn', g .. 'tok')
                if not f[1] then return {{'unknown'}} end
                end_guest(id, f[2], f[4], ARGV[5], ARGV[4])
                return {{'ok', f[2] or '', f[3] or '', f[1]}}
                "#
            )),
            // KEYS: session   ARGV: field, value [, field, value]
            checkpoint: Script::new(
                r#"
                if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
                redis.call('HSET', KEYS[1], unpack(ARGV))
                return 1
                "#,
            ),
        }
    }
}
